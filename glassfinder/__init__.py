"""GlassFinder: find eyewear frames from a photo, backed by a catalogue of 3D eyewear assets.

The library holds all logic; DAGs, plugins and the CLI only wire and call into it.
"""

__version__ = "0.1.0"
