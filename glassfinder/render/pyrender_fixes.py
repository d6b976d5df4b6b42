"""pyrender, imported once with the platform chosen and three known faults fixed (NOTES-stack.md).

1. Blending: pyrender blends alpha like colour, so a lens over nothing gets alpha a^2 and a lens
   in front of the frame makes the frame see-through. Alpha is accumulated as coverage instead:
   the output is premultiplied RGBA, composited "over" the background by the caller.
2. OSMesa claims no framebuffer objects, so pyrender silently ignores the RGBA flag and MSAA;
   Mesa does support them.
3. The shader cache is keyed on a context object that never compares equal under OSMesa, so
   shaders recompile every frame and memory grows; it is keyed on the context's address here.
"""

from __future__ import annotations

import ctypes
import os

from glassfinder.render.gl import select_platform

PLATFORM = select_platform()

import OpenGL.contextdata  # noqa: E402
import pyrender  # noqa: E402
import pyrender.renderer  # noqa: E402
import pyrender.shader_program  # noqa: E402
from OpenGL import GL  # noqa: E402


def _premultiplied_blend(src: int, dst: int) -> None:
    if src == GL.GL_SRC_ALPHA and dst == GL.GL_ONE_MINUS_SRC_ALPHA:
        GL.glBlendFuncSeparate(
            GL.GL_SRC_ALPHA, GL.GL_ONE_MINUS_SRC_ALPHA, GL.GL_ONE, GL.GL_ONE_MINUS_SRC_ALPHA
        )
    else:
        GL.glBlendFunc(src, dst)


pyrender.renderer.glBlendFunc = _premultiplied_blend


def _context_key() -> int:
    ctx = OpenGL.contextdata.getContext()
    if isinstance(ctx, int):
        return ctx
    return int(ctypes.cast(ctx, ctypes.c_void_p).value or 0)


def _get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
    defines = defines or {}
    names = [
        os.path.split(fn)[1] for fn in (vertex_shader, fragment_shader, geometry_shader) if fn is not None
    ]
    key = tuple([_context_key(), *sorted([(s, 1) for s in names] + [(d, defines[d]) for d in defines])])
    if key not in self._program_cache:
        files = [
            os.path.join(self.shader_dir, fn) if fn else None
            for fn in (vertex_shader, fragment_shader, geometry_shader)
        ]
        self._program_cache[key] = pyrender.shader_program.ShaderProgram(
            vertex_shader=files[0], fragment_shader=files[1], geometry_shader=files[2], defines=defines
        )
    return self._program_cache[key]


pyrender.shader_program.ShaderProgramCache.get_program = _get_program

if PLATFORM == "osmesa":
    from pyrender.platforms.osmesa import OSMesaPlatform

    OSMesaPlatform.supports_framebuffers = lambda self: True

__all__ = ["GL", "PLATFORM", "pyrender"]
