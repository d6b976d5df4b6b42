"""Published models: weights + card under `models/<name>/<sha>/`, and the name's CURRENT pointer.

A version's files are written create-only, so a published model never changes; CURRENT moves by
compare-and-swap, so two trainers publishing at once cannot lose each other's move silently.
A name with nothing published resolves to the model of that name shipped inside the package
(glassfinder/models/, see `embed.packaged`), so a fresh store embeds and searches untrained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from glassfinder import layout
from glassfinder.embed.model import EmbeddingNet, ModelConfig, load_weights, weights_bytes
from glassfinder.errors import (
    FaultError,
    NoModelError,
    NotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
    PackagedModelError,
    PointerConflictError,
    StaleWriteError,
)
from glassfinder.nets.packaged import packaged_sha, read_packaged
from glassfinder.nets.weights import model_sha
from glassfinder.store.base import ObjectStore
from glassfinder.store.pointer import read_pointer, swap_pointer

WEIGHTS_FILE = "weights.pt"
CARD_FILE = "card.json"


@dataclass
class LoadedModel:
    name: str
    sha: str
    model: EmbeddingNet
    card: dict[str, Any]


def publish_model(
    store: ObjectStore, name: str, model: EmbeddingNet, card: dict[str, Any], *, make_current: bool = True
) -> str:
    """Write weights and card (create-only) and, by default, move CURRENT to them. Returns the sha."""
    weights = weights_bytes(model)
    sha = model_sha(weights)
    prefix = layout.model_prefix(name, sha)
    full_card = {
        **card,
        "name": name,
        "model_sha": sha,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "weights_bytes": len(weights),
        "config": model.config.to_dict(),
    }
    try:
        store.put(prefix + WEIGHTS_FILE, weights, create_only=True)
    except ObjectExistsError:
        existing = store.get(prefix + WEIGHTS_FILE)
        if existing != weights:  # a sha prefix collision: never overwrite a published model
            raise FaultError(f"model {name}@{sha} exists with different weights") from None
    # The same weights published before keep their first card.
    with contextlib.suppress(ObjectExistsError):
        store.put(
            prefix + CARD_FILE, json.dumps(full_card, indent=2, sort_keys=True).encode(), create_only=True
        )
    if make_current:
        set_current(store, name, sha)
    return sha


def published_sha(store: ObjectStore, name: str) -> tuple[str | None, str | None]:
    """(sha, etag) of the name's CURRENT in the store, or (None, None) when nothing is published."""
    raw, etag = read_pointer(store, layout.model_current_key(name))
    if raw is None:
        return None, None
    return str(raw["model_sha"]), etag


def current_sha(store: ObjectStore, name: str) -> tuple[str | None, str | None]:
    """(sha, etag) of the model `name` resolves to: the store's CURRENT, else the packaged model.

    The packaged model comes with etag None (no pointer exists yet); (None, None) when neither.
    """
    sha, etag = published_sha(store, name)
    if sha is None:
        return packaged_sha(name), None
    return sha, etag


def set_current(store: ObjectStore, name: str, sha: str) -> None:
    """Point the name's CURRENT at `sha` by compare-and-swap."""
    key = layout.model_current_key(name)
    if not store.exists(layout.model_prefix(name, sha) + WEIGHTS_FILE):
        raise NotFoundError(f"model {name}@{sha} is not published under {store.uri}/models/{name}/")
    previous, etag = published_sha(store, name)
    try:
        swap_pointer(store, key, {"model_sha": sha, "previous": previous}, etag)
    except StaleWriteError as exc:
        raise PointerConflictError(
            f"model {name} CURRENT moved while publishing {sha} (another publisher?): re-read and retry"
        ) from exc


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """'name' or 'name@sha'."""
    name, _, sha = ref.partition("@")
    return name, sha or None


def load_model(store: ObjectStore, ref: str) -> LoadedModel:
    """Load 'name' (its CURRENT) or 'name@sha', verifying the weights against the card."""
    name, sha = parse_model_ref(ref)
    if sha is None:
        sha, _ = current_sha(store, name)
        if sha is None:
            raise NoModelError(
                f"no model named {name!r} is published in {store.uri}: run `glassfinder train` first"
            )
    prefix = layout.model_prefix(name, sha)
    if not store.exists(prefix + WEIGHTS_FILE):
        packaged = _load_packaged(name, sha)
        if packaged is not None:
            return packaged
    try:
        card = json.loads(store.get(prefix + CARD_FILE))
        weights = store.get(prefix + WEIGHTS_FILE)
    except ObjectNotFoundError as exc:
        raise FaultError(f"model {name}@{sha} is incomplete in {store.uri}: {exc}") from exc
    digest = hashlib.sha256(weights).hexdigest()
    if digest != card.get("weights_sha256") or model_sha(weights) != sha:
        raise FaultError(
            f"model {name}@{sha}: weights sha256 {digest} does not match its card "
            f"({card.get('weights_sha256')}); refusing a corrupted model"
        )
    config = ModelConfig.from_dict(card["config"])
    return LoadedModel(name, sha, load_weights(config, weights, f"{store.uri}/{prefix}{WEIGHTS_FILE}"), card)


def _load_packaged(name: str, sha: str) -> LoadedModel | None:
    """The packaged model `name` when its sha is `sha` (verified against its card), else None."""
    if packaged_sha(name) != sha:
        return None
    packaged = read_packaged(name)
    if packaged.sha != sha:
        raise PackagedModelError(
            f"packaged model {packaged.path}: weights give model sha {packaged.sha}, its card says {sha}"
        )
    config = ModelConfig.from_dict(packaged.card["config"])
    return LoadedModel(name, sha, load_weights(config, packaged.weights, str(packaged.path)), packaged.card)
