"""Rendering: offscreen pyrender set-up, asset previews and (later) virtual try-on."""
