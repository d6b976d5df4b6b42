"""Batched inference: aligned crops -> unit embeddings, on CUDA with mixed precision or on CPU.

On CPU, inference is deterministic: the same crops give the same bytes whatever batch they
travel in. The network has no batch-dependent op in eval mode, but CPU kernels choose their
blocking by batch size (a lone crop differs from a batched one in the last bit), so every
forward is padded to the full batch size.

The query path embeds one crop at a time, where BatchNorm's own pass over every activation is a
sizeable share of the forward: `fold_batchnorm` gives it a copy with each BatchNorm folded into
the layer before it (the same function to ~1e-7; nothing of it is ever saved).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from glassfinder.embed.model import EmbeddingNet, pick_device, to_input
from glassfinder.nets.fold import fold_batchnorm


class Embedder:
    """A model ready for inference on one device."""

    def __init__(
        self,
        model: EmbeddingNet,
        *,
        device: str | None = None,
        batch_size: int = 128,
        amp: bool = True,
        fold: bool = False,
    ) -> None:
        """fold: run a BatchNorm-folded copy (see `fold_batchnorm`): for a server's lone crops;
        off by default so that training's validation embeds through the live network."""
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self._net: nn.Module = fold_batchnorm(self.model) if fold else self.model
        self.batch_size = batch_size
        self.amp = amp and self.device.type == "cuda"
        self.dim = model.config.dim
        self.geometry = model.config.crop

    @torch.inference_mode()
    def forward(self, crops: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 -> (n, dim) float32, in one forward (n <= a sensible batch)."""
        x = to_input(crops).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            y = self._net(x)
        return y.float().cpu().numpy()

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 -> (n, dim) float32 unit vectors, in batches."""
        out = np.empty((len(crops), self.dim), dtype=np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size and self.device.type == "cpu":
                pad = np.zeros((self.batch_size - n, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            out[start : start + n] = self.forward(chunk)[:n]
        return out

    def embed_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for crops in batches:
            yield self.embed(crops)
