"""Weights files: their identity, and the one way a network is rebuilt from one.

Every reader goes through `read_weights` (torch.load with weights_only=True: a weights file is
data, and a forged one must never run code) and `load_into` (strict: a key too many or too few is
an error naming the file, never a half-loaded network).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import torch
from torch import nn

from glassfinder.errors import FaultError, GlassFinderError


def model_sha(weights: bytes) -> str:
    """16 hex digits of sha256 over the weights file: the model's identity in store keys."""
    return hashlib.sha256(weights).hexdigest()[:16]


def read_weights(data: bytes, where: str, what: str, error: type[GlassFinderError] = FaultError) -> Any:
    """The tensors and plain data of a weights file; `what` names it in errors ("model weights")."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file: all mean "not weights"
        raise error(f"{what} {where} cannot be loaded ({type(exc).__name__}: {exc})") from exc


def load_into(
    net: nn.Module, state: Any, where: str, what: str, *, allow_missing_prefix: str | None = None
) -> None:
    """Load `state` into `net`, strictly; weights named `allow_missing_prefix`... may be missing."""
    if not isinstance(state, dict):
        raise FaultError(f"{what} {where}: expected a state dict, got {type(state).__name__}")
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except Exception as exc:  # a tensor of the wrong shape
        raise FaultError(f"{what} {where} cannot be loaded ({type(exc).__name__}: {exc})") from exc
    wrong = list(unexpected) + [k for k in missing if not k.startswith(allow_missing_prefix or "\0")]
    if wrong:
        raise FaultError(f"{what} {where} do not fit this network: {wrong[:5]}")
