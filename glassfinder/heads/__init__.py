"""Who wears the renders: procedural 3D heads (default), photo banks, the labelled portraits and
the one training photo, behind one interface. Not face analysis: that is glassfinder.face."""
