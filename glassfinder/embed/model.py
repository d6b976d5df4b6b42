"""The embedding network in plain torch: a small residual CNN and an L2-normalised head.

Plain torch (no torchvision) because torchvision wheels do not import beside the pinned CPU
torch. The architecture is described by `ModelConfig`, which travels in the model card, so a
published model can be rebuilt from its card and weights alone.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glassfinder.embed.align import CropGeometry
from glassfinder.errors import GlassFinderError

ARCHITECTURE = "glassfinder-resnet-v1"
#: Per-channel normalisation of [0, 1] RGB crops (ImageNet statistics: close to renders' too).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides the network's shape and what it expects as input."""

    dim: int = 128
    widths: tuple[int, ...] = (24, 48, 96, 192)
    blocks: tuple[int, ...] = (1, 2, 2, 1)
    crop: CropGeometry = field(default_factory=CropGeometry)
    architecture: str = ARCHITECTURE

    def __post_init__(self) -> None:
        if self.architecture != ARCHITECTURE:
            raise GlassFinderError(f"model architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise GlassFinderError(
                f"model widths and blocks must be non-empty and of equal length, got {self.widths} "
                f"and {self.blocks}"
            )
        if self.dim < 8:
            raise GlassFinderError(f"embedding dim must be >= 8, got {self.dim}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        try:
            return cls(
                dim=int(raw["dim"]),
                widths=tuple(int(w) for w in raw["widths"]),
                blocks=tuple(int(b) for b in raw["blocks"]),
                crop=CropGeometry(**raw["crop"]),
                architecture=str(raw["architecture"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GlassFinderError(f"model config is malformed ({exc!r}): {raw}") from exc


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.skip(x), inplace=True)


class EmbeddingNet(nn.Module):
    """Crops (n, 3, h, w) normalised RGB -> (n, dim) unit vectors.

    Pooling is mean and max concatenated: max keeps small, decisive details (a hinge, a keyhole
    bridge) that averaging over the band washes out.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        w0 = config.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 2, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(True))
        layers: list[nn.Module] = []
        cin = w0
        for i, (width, count) in enumerate(zip(config.widths, config.blocks, strict=True)):
            for j in range(count):
                layers.append(_Block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(2 * cin, config.dim)
        self.head_bn = nn.BatchNorm1d(config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(self.stem(x))
        pooled = torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], dim=1)
        return F.normalize(self.head_bn(self.head(pooled)).float(), dim=1)


def build_model(config: ModelConfig, *, seed: int) -> EmbeddingNet:
    """A freshly initialised network; the same seed gives the same weights (the untrained baseline)."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return EmbeddingNet(config)
    finally:
        torch.random.set_rng_state(gen_state)


def to_input(crops: np.ndarray) -> torch.Tensor:
    """(n, h, w, 3) uint8 crops -> (n, 3, h, w) float32 normalised tensor."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def weights_bytes(model: nn.Module) -> bytes:
    """The state dict serialised: what is published, and what the model sha is computed over."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, buf)
    return buf.getvalue()


def model_sha(weights: bytes) -> str:
    """16 hex digits of sha256 over the weights file: the model's identity in store keys."""
    return hashlib.sha256(weights).hexdigest()[:16]


def load_weights(config: ModelConfig, weights: bytes, where: str) -> EmbeddingNet:
    """Rebuild a network from its config and published weights (never unpickles code)."""
    model = EmbeddingNet(config)
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise GlassFinderError(f"model weights {where} cannot be loaded into {config}: {exc}") from exc
    return model.eval()


def pick_device(requested: str | None = None) -> torch.device:
    """'cuda' when present (or asked for), else CPU."""
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise GlassFinderError(f"device {requested!r} requested but CUDA is not available")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
