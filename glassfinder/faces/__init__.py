"""Faces to put glasses on: procedural 3D heads (default) and photo banks, behind one interface."""
