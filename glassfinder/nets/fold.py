"""Inference copies with each BatchNorm folded into the convolution before it (see embed.infer)."""

from __future__ import annotations

import copy
from itertools import pairwise

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from glassfinder.errors import FaultError


def _fold_sequential(seq: nn.Sequential) -> None:
    """Fold each BatchNorm2d that directly follows a Conv2d in `seq` (in place)."""
    names = list(seq._modules)
    for a, b in pairwise(names):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            seq._modules[a] = fuse_conv_bn_eval(conv, bn)
            seq._modules[b] = nn.Identity()


def _fold_pair(module: nn.Module, layer: str, bn: str) -> None:
    """Fold `module.<bn>` into `module.<layer>` (a Conv2d or Linear whose output only it reads)."""
    first, norm = getattr(module, layer), getattr(module, bn)
    fused = (
        fuse_conv_bn_eval(first, norm) if isinstance(first, nn.Conv2d) else fuse_linear_bn_eval(first, norm)
    )
    setattr(module, layer, fused)
    setattr(module, bn, nn.Identity())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference-only copy of an eval-mode model with every BatchNorm folded into the
    convolution (or linear layer) that feeds it, so one pass over the activations does both.

    Folds only where the layer's output goes to the BatchNorm alone: consecutive Conv2d ->
    BatchNorm2d in a Sequential (MobileNetV2, the face network's fuse stage, the ResNet stem and
    skips), and the (layer, norm) attribute pairs a module names in its FOLD_PAIRS (a ResNet
    block's conv1/bn1 and conv2/bn2, the embedding head's linear/batch norm).
    The copy's state dict has other keys: it is for running, never for saving or training.
    """
    if model.training:
        raise FaultError("fold_batchnorm needs an eval-mode model (it folds running statistics)")
    folded = copy.deepcopy(model)
    for module in list(folded.modules()):
        if isinstance(module, nn.Sequential):
            _fold_sequential(module)
        for layer, norm in getattr(module, "FOLD_PAIRS", ()):
            _fold_pair(module, layer, norm)
    return folded.eval()
