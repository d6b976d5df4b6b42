"""Is the face wearing glasses? A linear classifier on oriented gradients of the aligned eye band.

Why this and not the embedding: the embedding is trained only on faces *with* glasses, so where
a bare face lands in its space is undefined, and a similarity threshold on it refuses or accepts
by accident. Frames, rims and lens edges are outlines around both eyes joined by a bridge, which
histograms of oriented gradients (HOG) capture directly. A logistic regression on them trains in
seconds on a CPU from renders of the *same* faces with and without glasses (so the only
difference it can learn is the glasses), damaged like shoppers' photos. Its threshold is set on
held-out identities for a target false-refusal rate; the card records the false-refusal and
false-accept rates there and, when a photo bank is given, on held-out render pairs of its faces.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from glassfinder import layout
from glassfinder.embed.align import CropGeometry, align_crop
from glassfinder.embed.augment import AugmentConfig, augment_crop
from glassfinder.errors import (
    GlassFinderError,
    ObjectExistsError,
    ObjectNotFoundError,
    PointerConflictError,
    StaleWriteError,
)
from glassfinder.render.spec import RenderSpec, plan_view
from glassfinder.store.base import ObjectStore
from glassfinder.store.pointer import read_pointer, swap_pointer

log = logging.getLogger(__name__)

PRESENCE_MODEL_NAME = "glasses-presence"
PARAMS_FILE = "presence.json"
FEATURES_VERSION = 1
#: The band the classifier looks at: the default eye band (the embedding's), so a query aligns once.
PRESENCE_GEOMETRY = CropGeometry()
#: Photo-like damage for training crops; no occluders (a patch over a lens would be a wrong label).
PRESENCE_DAMAGE = AugmentConfig(occlude_p=0.0)
#: Views of the training renders: every catalogue pose, lens and light, 200 identities.
PRESENCE_SPEC = RenderSpec(image_px=192, face_first=0, face_count=200, fit_jitter=0.5, seed=7)


def _hog() -> Any:
    import cv2

    g = PRESENCE_GEOMETRY
    return cv2.HOGDescriptor((g.width, g.height), (16, 16), (8, 8), (8, 8), 9)


def presence_features(crops: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) uint8 aligned bands -> (n, f) float32: HOG of the grey band + its colour layout.

    The colour part (the band shrunk to 16 x 8, per channel, minus its mean) lets dark lenses
    count as evidence even where their outline is lost against dark hair or skin.
    """
    import cv2

    crops = np.asarray(crops)
    g = PRESENCE_GEOMETRY
    if crops.ndim != 4 or crops.shape[1:] != (g.height, g.width, 3) or crops.dtype != np.uint8:
        raise GlassFinderError(
            f"presence crops must be (n, {g.height}, {g.width}, 3) uint8, got {crops.shape} {crops.dtype}"
        )
    hog = _hog()
    out = []
    for crop in crops:
        grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
        gradients = hog.compute(grey).ravel()
        small = cv2.resize(crop, (16, 8), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        colour = (small - small.mean(axis=(0, 1), keepdims=True)).ravel()
        out.append(np.concatenate([gradients, colour]))
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class PresenceModel:
    """Standardisation, weights, bias and the calibrated decision threshold (probability)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float
    features_version: int = FEATURES_VERSION

    def probability(self, crops: np.ndarray) -> np.ndarray:
        """(n,) float: probability that each aligned band shows glasses."""
        return self.probability_of_features(presence_features(crops))

    def probability_of_features(self, features: np.ndarray) -> np.ndarray:
        """(n,) float: the same, from `presence_features` already computed."""
        z = ((features - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "features_version": self.features_version,
                "geometry": asdict(PRESENCE_GEOMETRY),
                "threshold": self.threshold,
                "intercept": self.intercept,
                "mean": self.mean.tolist(),
                "scale": self.scale.tolist(),
                "coef": self.coef.tolist(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> PresenceModel:
        try:
            raw = json.loads(data)
            model = cls(
                mean=np.asarray(raw["mean"], np.float32),
                scale=np.asarray(raw["scale"], np.float32),
                coef=np.asarray(raw["coef"], np.float32),
                intercept=float(raw["intercept"]),
                threshold=float(raw["threshold"]),
                features_version=int(raw["features_version"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise GlassFinderError(f"{where}: not a glasses-presence model ({exc!r})") from exc
        if model.features_version != FEATURES_VERSION:
            raise GlassFinderError(
                f"{where}: features version {model.features_version}, this GlassFinder computes "
                f"{FEATURES_VERSION}: retrain it with `glassfinder presence train`"
            )
        if not (model.mean.shape == model.scale.shape == model.coef.shape):
            raise GlassFinderError(f"{where}: mean, scale and coef differ in length")
        return model


# --- training data ----------------------------------------------------------------------------
@dataclass
class PresenceData:
    """Aligned, damaged bands of the same views with and without glasses.

    source: "procedural" or "photo" per pair; val: whether the pair is held out for calibration
    (procedural pairs by identity; photo pairs by pair, their faces being few).
    """

    with_glasses: np.ndarray  # (n, h, w, 3) uint8
    bare: np.ndarray  # (n, h, w, 3) uint8
    source: np.ndarray  # (n,) str
    val: np.ndarray  # (n,) bool


@dataclass(frozen=True)
class PresenceTrainConfig:
    pairs: int = 600  # on procedural heads
    photo_pairs: int = 80  # on the photo bank's faces, when one is given
    seed: int = 0
    #: Procedural identities whose index % val_every == 0 (and every val_every-th photo pair)
    #: are held out to set the threshold and measure the rates.
    val_every: int = 4
    #: At most this share of glasses-wearing validation faces may be refused.
    target_false_refusal: float = 0.02
    c: float = 0.05  # inverse L2 strength of the logistic regression
    spec: RenderSpec = field(default_factory=lambda: PRESENCE_SPEC)


def _band(rgb: np.ndarray, eyes: np.ndarray, seed: int) -> np.ndarray:
    loose = PRESENCE_GEOMETRY.widened(1.5)
    band = align_crop(rgb, eyes, loose)
    return augment_crop(band, loose, PRESENCE_GEOMETRY, np.random.default_rng(seed), PRESENCE_DAMAGE)


def render_presence_pairs(
    assets: Sequence[tuple[str, bytes]],
    config: PresenceTrainConfig,
    *,
    photos: Sequence[tuple[Any, np.ndarray]] = (),
) -> PresenceData:
    """Views of catalogue assets on procedural heads and on photo-bank faces, each also bare.

    assets: (asset_sha256, GLB bytes) of normalised catalogue assets. photos: (PhotoFace, crop)
    of a photo bank of faces *without* glasses, the only real skin, brows and lids the
    classifier sees, so that it learns what glasses add to a real face and not that any real
    face has more detail than a rendered one. Views follow the spec's pose, lens, light and
    background draws; both crops of a pair get the same eye jitter and damage.
    """
    from glassfinder.catalog.build import import_glb
    from glassfinder.faces.procedural import build_head
    from glassfinder.render.tryon import AssetMeshes, PhotoRenderer, TryOnRenderer

    if not assets:
        raise GlassFinderError("presence training needs at least one catalogue asset, got none")
    if config.pairs < 8:
        raise GlassFinderError(f"presence training needs at least 8 pairs, got {config.pairs}")
    spec = config.spec
    rng = np.random.default_rng(config.seed)
    renderer = TryOnRenderer(spec.image_px, head_cache=spec.face_count)
    meshes: dict[str, Any] = {}
    heads: dict[int, Any] = {}
    worn, bare, source, val = [], [], [], []

    def asset_pick() -> tuple[str, Any]:
        sha, data = assets[int(rng.integers(len(assets)))]
        if sha not in meshes:
            meshes[sha] = AssetMeshes(import_glb(data))
        return sha, meshes[sha]

    try:
        for i in range(config.pairs):
            sha, asset = asset_pick()
            view = plan_view(spec, sha, i, fixed_lens=None)
            head = heads.get(view.face_index)
            if head is None:
                head = heads[view.face_index] = build_head(view.face_index)
            on, off = renderer.render(asset, head, view), renderer.render(None, head, view)
            pair_seed = int(rng.integers(2**31))
            worn.append(_band(on.rgb, on.eyes_xy, pair_seed))
            bare.append(_band(off.rgb, off.eyes_xy, pair_seed))
            source.append("procedural")
            val.append(view.face_index % config.val_every == 0)
        if photos:
            from glassfinder.faces.photos import CROP_PX

            renderer.set_size(CROP_PX // 2)
            on_photo = PhotoRenderer(renderer)
            for i in range(config.photo_pairs):
                face, crop = photos[i % len(photos)]
                sha, asset = asset_pick()
                view = plan_view(spec, sha, config.pairs + i, fixed_lens=None)
                on = on_photo.render(asset, face, crop, view)
                size = on.rgb.shape[1::-1]
                small = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS))
                pair_seed = int(rng.integers(2**31))
                worn.append(_band(on.rgb, on.eyes_xy, pair_seed))
                bare.append(_band(small, on.eyes_xy, pair_seed))
                source.append("photo")
                val.append(i % config.val_every == 0)
    finally:
        renderer.close()
    return PresenceData(np.stack(worn), np.stack(bare), np.asarray(source), np.asarray(val))


# --- training and calibration -----------------------------------------------------------------
def rates(p_with: np.ndarray, p_bare: np.ndarray, threshold: float) -> dict[str, float | int]:
    """False-refusal (glasses refused) and false-accept (bare face accepted) at `threshold`."""
    return {
        "with_glasses": len(p_with),
        "bare": len(p_bare),
        "false_refusal": round(float((np.asarray(p_with) < threshold).mean()), 4) if len(p_with) else 0.0,
        "false_accept": round(float((np.asarray(p_bare) >= threshold).mean()), 4) if len(p_bare) else 0.0,
    }


def fit_presence(data: PresenceData, config: PresenceTrainConfig) -> tuple[PresenceModel, dict[str, Any]]:
    """Fit on the training pairs; set the threshold and measure rates on the held-out ones."""
    from sklearn.linear_model import LogisticRegression

    val = data.val
    if val.all() or not val.any():
        raise GlassFinderError(
            f"presence data of {len(val)} pairs has {int(val.sum())} held out: need some on both sides"
        )
    f_with, f_bare = presence_features(data.with_glasses), presence_features(data.bare)
    x_train = np.concatenate([f_with[~val], f_bare[~val]])
    y_train = np.concatenate([np.ones((~val).sum()), np.zeros((~val).sum())])
    mean = x_train.mean(axis=0)
    scale = x_train.std(axis=0) + 1e-3
    clf = LogisticRegression(C=config.c, max_iter=3000)
    clf.fit((x_train - mean) / scale, y_train)
    model = PresenceModel(
        mean.astype(np.float32),
        scale.astype(np.float32),
        clf.coef_.ravel().astype(np.float32),
        float(clf.intercept_[0]),
        0.5,
    )
    p_with, p_bare = model.probability_of_features(f_with), model.probability_of_features(f_bare)
    # The highest threshold that refuses at most the target share of held-out glasses wearers.
    threshold = float(np.quantile(p_with[val], config.target_false_refusal, method="lower"))
    threshold = min(max(threshold, 1e-4), 0.5)
    model = replace(model, threshold=threshold)
    report: dict[str, Any] = {"threshold": round(threshold, 6)}
    for split, mask in (("train", ~val), ("validation", val)):
        for src in ("procedural", "photo"):
            m = mask & (data.source == src)
            if m.any():
                report[f"{split}_{src}"] = rates(p_with[m], p_bare[m], threshold)
    report["validation"] = rates(p_with[val], p_bare[val], threshold)
    return model, report


def presence_sha(model: PresenceModel) -> str:
    return hashlib.sha256(model.to_json()).hexdigest()[:16]


def publish_presence(store: ObjectStore, model: PresenceModel, card: dict[str, Any]) -> str:
    """Write the model and its card (create-only) and move the presence CURRENT to it."""
    sha = presence_sha(model)
    prefix = layout.model_prefix(PRESENCE_MODEL_NAME, sha)
    for key, data in (
        (prefix + PARAMS_FILE, model.to_json()),
        (prefix + "card.json", json.dumps({**card, "sha": sha}, indent=2, sort_keys=True).encode()),
    ):
        # The same parameters published before keep their first card.
        with contextlib.suppress(ObjectExistsError):
            store.put(key, data, create_only=True)
    key = layout.model_current_key(PRESENCE_MODEL_NAME)
    previous, etag = read_pointer(store, key)
    try:
        swap_pointer(store, key, {"sha": sha, "previous": (previous or {}).get("sha")}, etag)
    except StaleWriteError as exc:
        raise PointerConflictError(
            f"{store.uri}/{key} moved while publishing {sha} (another publisher?): re-read and retry"
        ) from exc
    return sha


def current_presence_sha(store: ObjectStore) -> str | None:
    """The sha the presence CURRENT names, else the packaged model's; None when neither exists."""
    pointer, _ = read_pointer(store, layout.model_current_key(PRESENCE_MODEL_NAME))
    if pointer is None:
        packaged = packaged_presence()
        return None if packaged is None else packaged[0]
    return str(pointer["sha"])


def packaged_presence_paths() -> tuple[Any, Any]:
    """(parameters, card) files of the presence model shipped in glassfinder/models/."""
    from glassfinder.embed import packaged

    return (
        packaged.MODELS_DIR / f"{PRESENCE_MODEL_NAME}.json",
        packaged.MODELS_DIR / f"{PRESENCE_MODEL_NAME}.card.json",
    )


def packaged_presence() -> tuple[str, PresenceModel, dict[str, Any]] | None:
    """(sha, model, card) of the packaged presence model, verified against its card; None if absent."""
    from glassfinder.embed.packaged import PackagedModelError

    params, card_file = packaged_presence_paths()
    if not card_file.is_file():
        return None
    try:
        card = json.loads(card_file.read_text())
        model = PresenceModel.from_json(params.read_bytes(), str(params))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackagedModelError(f"packaged glasses-presence model cannot be read ({exc})") from exc
    sha = presence_sha(model)
    if sha != card.get("sha"):
        raise PackagedModelError(
            f"packaged glasses-presence model {params}: sha {sha} does not match its card {card_file} "
            f"({card.get('sha')}); refusing a corrupted or swapped model (reinstall glassfinder)"
        )
    return sha, model, card


def load_presence(store: ObjectStore, sha: str | None = None) -> tuple[str, PresenceModel, dict[str, Any]]:
    """(sha, model, card) of the presence CURRENT (else the packaged one), or of `sha`."""
    if sha is None:
        sha = current_presence_sha(store)
        if sha is None:
            raise GlassFinderError(
                f"no glasses-presence model in {store.uri}: run `glassfinder presence train` "
                "(`glassfinder demo` trains one on its sample catalogue)"
            )
    prefix = layout.model_prefix(PRESENCE_MODEL_NAME, sha)
    if not store.exists(prefix + PARAMS_FILE):
        packaged = packaged_presence()
        if packaged is not None and packaged[0] == sha:
            return packaged
    try:
        data = store.get(prefix + PARAMS_FILE)
        card = json.loads(store.get(prefix + "card.json"))
    except ObjectNotFoundError as exc:
        raise GlassFinderError(f"glasses-presence model {sha} is incomplete in {store.uri}: {exc}") from exc
    model = PresenceModel.from_json(data, f"{store.uri}/{prefix}{PARAMS_FILE}")
    if presence_sha(model) != sha:
        raise GlassFinderError(f"{store.uri}/{prefix}{PARAMS_FILE} does not match its sha {sha}: refusing it")
    return sha, model, card


def train_presence(
    assets: Sequence[tuple[str, bytes]],
    config: PresenceTrainConfig,
    *,
    photos: Sequence[tuple[Any, np.ndarray]] = (),
) -> tuple[PresenceModel, dict[str, Any]]:
    """Render the pairs, fit, calibrate; (model, report with rates and timings)."""
    start = time.perf_counter()
    data = render_presence_pairs(assets, config, photos=photos)
    rendered = time.perf_counter() - start
    model, report = fit_presence(data, config)
    fitted = time.perf_counter() - start - rendered
    report["seconds"] = {"render": round(rendered, 1), "fit": round(fitted, 1)}
    report["config"] = {k: v for k, v in asdict(config).items() if k != "spec"} | {
        "spec_hash": config.spec.spec_hash,
        "photos": len(photos),
    }
    log.info(
        "glasses presence: %d pairs rendered in %.0f s; held-out false-refusal %.3f, false-accept %.3f",
        len(data.val),
        rendered,
        report["validation"]["false_refusal"],
        report["validation"]["false_accept"],
    )
    return model, report


def catalogue_assets(store: ObjectStore, limit: int = 64) -> list[tuple[str, bytes]]:
    """(sha256, GLB) of up to `limit` products of the store's catalogue, spread over it."""
    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, catalog_asset_key
    from glassfinder.catalog.manifest import read_manifest_rows

    rows = read_manifest_rows(store, CATALOG_MANIFEST_KEY)
    if not rows:
        raise GlassFinderError(
            f"{store.uri}/{CATALOG_MANIFEST_KEY} lists no products: ingest a catalogue first"
        )
    picked = rows[:: max(1, len(rows) // limit)][:limit]
    return [(r["asset_sha256"], store.get(catalog_asset_key(r["asset_sha256"]))) for r in picked]


def bank_photos(store: ObjectStore, bank_uri: str) -> list[tuple[Any, np.ndarray]]:
    """(PhotoFace, crop) of the usable photos of a bank (analysed once, cached in `store`)."""
    from glassfinder.faces.photos import PhotoBank
    from glassfinder.store import open_store

    bank = PhotoBank(open_store(bank_uri), "", store)
    usable, quarantined = bank.scan()
    for bad in quarantined:
        log.warning("photo bank: %s left out (%s)", bad["photo"], bad["reason"])
    return [(face, bank.crop(key)) for face, key in usable]


def train_and_publish_presence(
    store: ObjectStore, config: PresenceTrainConfig, *, photo_bank: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Train on the store's catalogue (and a photo bank of bare faces) and make it CURRENT."""
    photos = bank_photos(store, photo_bank) if photo_bank else []
    model, report = train_presence(catalogue_assets(store), config, photos=photos)
    card = {"kind": "glasses-presence", "photo_bank": photo_bank, "evaluation": report}
    return publish_presence(store, model, card), report
