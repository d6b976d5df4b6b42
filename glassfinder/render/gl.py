"""Headless OpenGL platform selection: must run before pyrender (or PyOpenGL) is imported.

EGL is the default (Mesa llvmpipe on CPU machines, the NVIDIA driver on GPU workers);
GLASSFINDER_GL_PLATFORM=osmesa selects the software fallback. See NOTES-stack.md for why.
"""

from __future__ import annotations

import sys

from glassfinder import settings
from glassfinder.errors import BadInputError, FaultError

PLATFORMS = ("egl", "osmesa")


def select_platform() -> str:
    """Set PYOPENGL_PLATFORM once, before any OpenGL import, and return it."""
    wanted = settings.env(settings.GL_PLATFORM_ENV) or settings.env("PYOPENGL_PLATFORM") or "egl"
    if wanted not in PLATFORMS:
        raise BadInputError(f"GLASSFINDER_GL_PLATFORM must be one of {PLATFORMS}, got {wanted!r}")
    current = settings.env("PYOPENGL_PLATFORM") or None
    if "OpenGL" in sys.modules and current != wanted:
        raise FaultError(
            f"OpenGL was imported with platform {current!r} before GlassFinder could select {wanted!r}; "
            "import glassfinder.render first"
        )
    settings.set_env("PYOPENGL_PLATFORM", wanted)
    return wanted
