"""Headless OpenGL platform selection: must run before pyrender (or PyOpenGL) is imported.

EGL is the default (Mesa llvmpipe on CPU machines, the NVIDIA driver on GPU workers);
GLASSFINDER_GL_PLATFORM=osmesa selects the software fallback. See NOTES-stack.md for why.
"""

from __future__ import annotations

import os
import sys

from glassfinder.errors import GlassFinderError

PLATFORMS = ("egl", "osmesa")


def select_platform() -> str:
    """Set PYOPENGL_PLATFORM once, before any OpenGL import, and return it."""
    wanted = os.environ.get("GLASSFINDER_GL_PLATFORM") or os.environ.get("PYOPENGL_PLATFORM") or "egl"
    if wanted not in PLATFORMS:
        raise GlassFinderError(f"GLASSFINDER_GL_PLATFORM must be one of {PLATFORMS}, got {wanted!r}")
    current = os.environ.get("PYOPENGL_PLATFORM")
    if "OpenGL" in sys.modules and current != wanted:
        raise GlassFinderError(
            f"OpenGL was imported with platform {current!r} before GlassFinder could select {wanted!r}; "
            "import glassfinder.render first"
        )
    os.environ["PYOPENGL_PLATFORM"] = wanted
    return wanted
