"""The 3D viewer the product page uses: Google's <model-viewer> web component, served by the service itself.

The npm package `@google/model-viewer` (Apache-2.0; its `dist/model-viewer.min.js` bundles
three.js) is fetched once by `.ci/setup` with `npm pack`, hash-checked, and its one file kept in
`<venv>/share/glassfinder/web/`; nothing is fetched at run time and no page loads a CDN. Without
the file the product page shows the packshot in the viewer's place and says why.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

from glassfinder import settings

log = logging.getLogger(__name__)

MODEL_VIEWER_PACKAGE = "@google/model-viewer@4.4.0"
#: sha256 of dist/model-viewer.min.js in that package (the tarball's own hash is in .ci/setup).
MODEL_VIEWER_SHA256 = "18b2e711035aa4705ee281530a55dc2338ff05eed3d70ae16d54105282a75ed5"
ENV = settings.MODEL_VIEWER_JS_ENV


def viewer_js_path() -> Path:
    """Where the viewer's script is looked for: $GLASSFINDER_MODEL_VIEWER_JS, else the venv's share folder."""
    explicit = settings.env(ENV)
    if explicit:
        return Path(explicit)
    return Path(sys.prefix) / "share" / "glassfinder" / "web" / "model-viewer.min.js"


def load_viewer_js() -> bytes | None:
    """The viewer's script, checked against its pinned sha256; None (and one warning) when it is
    missing or altered, so the page falls back to packshots instead of running unknown code."""
    path = viewer_js_path()
    try:
        data = path.read_bytes()
    except OSError:
        log.warning(
            "3D viewer script %s is missing (bash .ci/setup installs it): product pages show packshots", path
        )
        return None
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_VIEWER_SHA256:
        log.warning(
            "3D viewer script %s has sha256 %s, expected %s (%s): not served",
            path, digest, MODEL_VIEWER_SHA256, MODEL_VIEWER_PACKAGE,
        )  # fmt: skip
        return None
    return data
