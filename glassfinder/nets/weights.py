"""A weights file's identity."""

from __future__ import annotations

import hashlib


def model_sha(weights: bytes) -> str:
    """16 hex digits of sha256 over the weights file: the model's identity in store keys."""
    return hashlib.sha256(weights).hexdigest()[:16]
