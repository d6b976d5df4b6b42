"""Default models that ship inside the package: a fresh store searches with no training step.

`glassfinder/models/<name>.pt` holds the weights and `<name>.card.json` the card (config, data
spec, figures, licence of the ImageNet weights it started from). The card names the weights'
sha256; a file that does not match it is refused, never loaded. The registry falls back to a
packaged model when a store has published none of that name (see `registry.current_sha`).
`python -m glassfinder.embed.default_model` retrains the embedding model.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glassfinder.errors import PackagedModelError
from glassfinder.nets.weights import model_sha

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    sha: str  # model_sha of the weights: the same identity a published copy would have
    weights: bytes
    card: dict[str, Any]
    path: Path


def weights_path(name: str, models_dir: Path | None = None) -> Path:
    return (models_dir or MODELS_DIR) / f"{name}.pt"


def card_path(name: str, models_dir: Path | None = None) -> Path:
    return (models_dir or MODELS_DIR) / f"{name}.card.json"


def available(name: str, models_dir: Path | None = None) -> bool:
    return card_path(name, models_dir).is_file()


def read_packaged(name: str, models_dir: Path | None = None) -> PackagedModel:
    """The packaged model `name`, its weights verified against the card's sha256."""
    cpath, wpath = card_path(name, models_dir), weights_path(name, models_dir)
    if not cpath.is_file():
        raise PackagedModelError(f"no packaged model named {name!r} (expected {cpath})")
    try:
        card = json.loads(cpath.read_text())
        weights = wpath.read_bytes()
    except (OSError, json.JSONDecodeError) as exc:
        raise PackagedModelError(f"packaged model {name!r} cannot be read ({exc})") from exc
    want = card.get("weights_sha256")
    digest = hashlib.sha256(weights).hexdigest()
    if digest != want:
        raise PackagedModelError(
            f"packaged model {wpath}: weights sha256 {digest} does not match its card {cpath} "
            f"({want}); refusing a corrupted or swapped model (reinstall glassfinder)"
        )
    return PackagedModel(name, model_sha(weights), weights, card, wpath)


def packaged_sha(name: str) -> str | None:
    """The model sha of packaged model `name`, or None when the package ships none of that name.

    Read from the card (not the weights) so that resolving a name stays cheap; loading checks
    the weights against it.
    """
    return _card_sha(card_path(name))


@functools.lru_cache(maxsize=8)
def _card_sha(path: Path) -> str | None:
    if not path.is_file():
        return None
    card = json.loads(path.read_text())
    sha = card.get("model_sha")
    if not isinstance(sha, str):
        raise PackagedModelError(f"packaged model card {path} has no model_sha")
    return sha
