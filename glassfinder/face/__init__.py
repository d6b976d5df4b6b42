"""Face analysis at run time: decode, detect, landmarks, glasses presence, verify, crop.

What the query path and the render and embedding stages import; it imports neither pyrender nor
any training code (glassfinder.face.training holds that, and only the training commands import it).
"""
