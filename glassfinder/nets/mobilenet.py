"""MobileNetV2 in plain torch, with torchvision's parameter names, and strict ImageNet weight loading.

Plain torch because torchvision's wheels do not import beside the pinned CPU torch build (see
NOTES-stack.md); the module and key layout copy torchvision's `mobilenet_v2` exactly, so its
ImageNet state dict (`features.N...`, `classifier.1`) loads with no renaming. Loading is strict:
every parameter the network has must come with the shape it expects, and the file may carry
nothing else but the layers this network drops (deeper stages and the classifier) - a missing,
unexpected or mis-shaped key is a `PretrainedWeightsError` naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from glassfinder.errors import BadInputError, PretrainedWeightsError

#: torchvision's inverted-residual settings: (expansion t, channels c, repeats n, first stride s).
INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
LAST_CHANNELS = 1280
#: features[0] stem, features[1..17] inverted residuals, features[18] the 1x1 conv to 1280.
FULL_DEPTH = 19


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """torchvision's block: 1x1 expand (unless t=1), 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu(cin, hidden, 1, 1))
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def mobilenet_v2_features(depth: int = FULL_DEPTH) -> tuple[nn.Sequential, int]:
    """(features[:depth], output channels): torchvision's `mobilenet_v2().features`, cut early.

    depth 17 stops after the 160-channel stage (stride 32); 19 is the whole trunk (1280 channels).
    """
    if not 2 <= depth <= FULL_DEPTH:
        raise BadInputError(f"MobileNetV2 depth must be 2..{FULL_DEPTH}, got {depth}")
    layers: list[nn.Module] = [_conv_bn_relu(3, 32, 3, 2)]
    cin = 32
    for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(_conv_bn_relu(cin, LAST_CHANNELS, 1, 1))
    kept = layers[:depth]
    channels = LAST_CHANNELS if depth == FULL_DEPTH else _out_channels(kept[-1])
    return nn.Sequential(*kept), channels


def _out_channels(layer: nn.Module) -> int:
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


def _dropped(key: str, depth: int) -> bool:
    """Keys an ImageNet file may carry that a network cut at `depth` deliberately leaves out."""
    if key.startswith("classifier."):
        return True
    parts = key.split(".")
    return len(parts) > 1 and parts[0] == "features" and parts[1].isdigit() and int(parts[1]) >= depth


def check_state_dict(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], depth: int, where: str
) -> dict[str, torch.Tensor]:
    """The subset of `given` for the `expected` parameters, or a PretrainedWeightsError naming the key.

    Every expected key must be present with the same shape; any key of `given` that is neither
    expected nor one of the layers cut away (`_dropped`) is refused, so a file from another
    architecture (or a renamed layout) can never half-load.
    """
    return strict_subset(
        expected,
        given,
        where,
        is_dropped=lambda key: _dropped(key, depth),
        layout="torchvision's mobilenet_v2 layout (features.N...)",
        only="torchvision's mobilenet_v2 layout (features.N..., classifier.1)",
    )


def strict_subset(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    where: str,
    *,
    is_dropped: Callable[[str], bool],
    layout: str,
    only: str,
) -> dict[str, torch.Tensor]:
    """The strict-loading rule every ImageNet trunk shares (see check_state_dict); `layout` and
    `only` name the expected naming in the messages."""
    missing = [k for k in expected if k not in given]
    if missing:
        raise PretrainedWeightsError(
            f"ImageNet weights {where}: missing key {missing[0]!r} ({len(missing)} missing in all); "
            f"expected {layout}"
        )
    unexpected = [k for k in given if k not in expected and not is_dropped(k)]
    if unexpected:
        raise PretrainedWeightsError(
            f"ImageNet weights {where}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all); "
            f"expected only {only}"
        )
    for key, want in expected.items():
        got = given[key]
        if not isinstance(got, torch.Tensor):
            raise PretrainedWeightsError(
                f"ImageNet weights {where}: key {key!r} is a {type(got).__name__}, expected a tensor"
            )
        if tuple(got.shape) != tuple(want.shape):
            raise PretrainedWeightsError(
                f"ImageNet weights {where}: key {key!r} has shape {tuple(got.shape)}, "
                f"expected {tuple(want.shape)}"
            )
    return {k: given[k] for k in expected}


def load_features(features: nn.Sequential, state: Mapping[str, torch.Tensor], depth: int, where: str) -> None:
    """Load a torchvision mobilenet_v2 state dict into `features` (strictly; see check_state_dict)."""
    expected = {f"features.{k}": v for k, v in features.state_dict().items()}
    picked = check_state_dict(expected, state, depth, where)
    features.load_state_dict({k.removeprefix("features."): v for k, v in picked.items()}, strict=True)
