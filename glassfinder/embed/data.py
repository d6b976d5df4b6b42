"""Views from image shards, decoded and aligned once into memory for training and evaluation.

Each view is kept as a *loose* crop: aligned on its eyes like the model's input, but over a
25% wider field, so training can jitter the alignment without re-decoding the render.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tqdm import tqdm

from glassfinder import layout
from glassfinder.embed.align import CropGeometry, align_crop, jitter_eyes
from glassfinder.embed.augment import AugmentConfig, photometric
from glassfinder.embed.composite import LayerViews
from glassfinder.errors import BadInputError, NotFoundError, ShardCorruptError
from glassfinder.render.spec import find_saved_spec
from glassfinder.store.base import ObjectStore
from glassfinder.store.shards import VIEW_FIELDS, ViewColumns, read_shard

log = logging.getLogger(__name__)

LOOSE_FACTOR = 1.25
#: Columns an in-memory view set keeps besides pixels (the identifying view columns + split).
META_COLUMNS = (*tuple(f.name for f in VIEW_FIELDS), "split")
_READ_COLUMNS = [*META_COLUMNS, "image", "eye_left_xy", "eye_right_xy"]


def decode_image(data: bytes, where: str) -> np.ndarray:
    """(h, w, 3) uint8 RGB from PNG or JPEG bytes.

    OpenCV first: it decodes PNG renders about 1.5x faster than Pillow, and decoding is the
    embed pipeline's largest cost on CPU. Pillow covers what OpenCV cannot read.
    """
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if decoded is not None:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise ShardCorruptError(f"{where}: image cannot be decoded ({exc})") from exc


def decode_layer(data: bytes, where: str) -> np.ndarray:
    """(h, w, 4) uint8 premultiplied RGB + alpha from a glasses layer's PNG (RenderSpec.glasses_layer)."""
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if decoded is None or decoded.ndim != 3 or decoded.shape[2] != 4:
        shape = None if decoded is None else decoded.shape
        raise ShardCorruptError(f"{where}: expected a glasses layer (an RGBA PNG), got {shape}")
    return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA)


def eyes_of(table: pa.Table) -> np.ndarray:
    """(n, 2, 2) float32 [left eye, right eye] pixels from an image shard's eye columns."""
    left = np.asarray(table.column("eye_left_xy").combine_chunks().flatten(), dtype=np.float32)
    right = np.asarray(table.column("eye_right_xy").combine_chunks().flatten(), dtype=np.float32)
    return np.stack([left.reshape(-1, 2), right.reshape(-1, 2)], axis=1)


def shard_keys(store: ObjectStore, spec_hash: str) -> list[str]:
    """Every image shard of one render spec, sorted."""
    return [i.key for i in store.list(layout.render_prefix(spec_hash)) if i.key.endswith(".parquet")]


def iter_shard_crops(
    store: ObjectStore,
    keys: Sequence[str],
    geometry: CropGeometry,
    *,
    splits: Sequence[str] | None = None,
    damage: AugmentConfig | None = None,
    seed: int = 0,
    layers: bool = False,
) -> Iterator[tuple[str, pa.Table, np.ndarray]]:
    """(key, metadata table, (n, h, w, 3) uint8 aligned crops) per shard, in key order.

    damage: photometric damage and eye-detector noise applied to each whole image before
    alignment, drawn from (seed, view key): how evaluation turns clean renders into queries.
    layers: the shards hold glasses layers; the crops are (n, h, w, 4) premultiplied RGB + alpha.
    """
    if layers and damage is not None:
        raise BadInputError("glasses layers are damaged after compositing, not as stored: pass no damage")
    decode = decode_layer if layers else decode_image
    for key in keys:
        table = read_shard(store, key, "image", columns=_READ_COLUMNS)
        if splits is not None:
            mask = pc.is_in(table.column("split"), value_set=pa.array(list(splits)))
            table = table.filter(mask)
        if table.num_rows == 0:
            continue
        eyes = eyes_of(table)
        images = table.column("image").to_pylist()
        view_keys = table.column("view_key").to_pylist()
        crops = []
        for i, img in enumerate(images):
            pixels, view_eyes = decode(img, f"{store.uri}/{key} row {i}"), eyes[i]
            if damage is not None:
                rng = np.random.default_rng([seed, *hashlib.sha256(view_keys[i].encode()).digest()[:8]])
                view_eyes = jitter_eyes(view_eyes, rng, damage.eye_sigma_frac)
                pixels = photometric(pixels, rng, damage)
            crops.append(align_crop(pixels, view_eyes, geometry))
        yield key, table.select(list(META_COLUMNS)), np.stack(crops)


@dataclass
class ViewSet:
    """Aligned crops of many views with their metadata, held in memory.

    crops: (n, h, w, 3) uint8 aligned with `geometry`; meta: one row per crop (META_COLUMNS).
    layers: for training sets holding glasses layers, which rows are layers and what composites
    them (see LayerViews).
    """

    crops: np.ndarray
    meta: pa.Table
    geometry: CropGeometry
    layers: LayerViews | None = None

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def product_ids(self) -> np.ndarray:
        return np.asarray(self.meta.column("product_id").to_pylist(), dtype=object)

    def labels(self) -> tuple[np.ndarray, list[str]]:
        """(n,) int64 class index per view and the product id of each class (sorted)."""
        classes = sorted(set(self.product_ids.tolist()))
        index = {p: i for i, p in enumerate(classes)}
        return np.array([index[p] for p in self.product_ids], dtype=np.int64), classes

    def subset(self, mask: np.ndarray) -> ViewSet:
        layers = None if self.layers is None else self.layers.subset(mask)
        return replace(self, crops=self.crops[mask], meta=self.meta.filter(pa.array(mask)), layers=layers)

    def view(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """Row i's loose crop; a glasses layer's is composited onto a face drawn from `rng`."""
        return self.crops[i] if self.layers is None else self.layers.view(self.crops[i], i, rng)

    def with_layers(self, layers: ViewSet, faces: np.ndarray) -> ViewSet:
        """These views followed by a glasses-layer set's (RGBA crops), drawn onto `faces`."""
        if self.layers is not None or layers.crops.shape[-1] != 4:
            raise BadInputError(
                "with_layers joins a set of whole views with one of RGBA glasses layers, got a set "
                f"{'with' if self.layers is not None else 'without'} layers and crops of {layers.crops.shape}"
            )
        index = np.concatenate([np.full(len(self), -1), np.arange(len(layers))])
        return ViewSet(
            np.concatenate([self.crops, layers.crops[..., :3]]),
            pa.concat_tables([self.meta, layers.meta]),
            self.geometry,
            layers=LayerViews(index, alpha=np.ascontiguousarray(layers.crops[..., 3]), faces=faces),
        )


def load_views(
    store: ObjectStore,
    spec_hash: str,
    geometry: CropGeometry,
    *,
    splits: Sequence[str] | None = None,
    progress: bool = False,
    damage: AugmentConfig | None = None,
    seed: int = 0,
    layers: bool = False,
) -> ViewSet:
    """Every view of one render spec (optionally only some splits) as aligned crops in memory
    (layers: RGBA crops of a glasses-layer spec; see iter_shard_crops)."""
    keys = shard_keys(store, spec_hash)
    if not keys:
        raise NotFoundError(f"no image shards under {store.uri}/renders/{spec_hash}/: render that spec first")
    if not layers and holds_glasses_layers(store, spec_hash):
        raise BadInputError(
            f"render spec {spec_hash} holds glasses layers (glasses alone, no face), not whole renders: "
            "train on it through layer_specs, never as a spec of views"
        )
    bar = None
    if progress:
        bar = tqdm(total=len(keys), unit="shard", desc=f"loading renders/{spec_hash}")
    crops, metas = [], []
    for _, meta, shard_crops in iter_shard_crops(
        store, keys, geometry, splits=splits, damage=damage, seed=seed, layers=layers
    ):
        crops.append(shard_crops)
        metas.append(meta)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not crops:
        raise BadInputError(
            f"render spec {spec_hash} has no views in split(s) {list(splits or [])} under {store.uri}"
        )
    log.info("loaded %d views of %d shards from renders/%s", sum(len(c) for c in crops), len(keys), spec_hash)
    return ViewSet(np.concatenate(crops), pa.concat_tables(metas), geometry)


def holds_glasses_layers(store: ObjectStore, spec_hash: str) -> bool:
    """Whether a stored render spec keeps glasses layers (decoded as RGB they are glasses on black)."""
    spec = find_saved_spec(store, spec_hash)
    return spec is not None and spec.glasses_layer


def view_columns(meta: pa.Table) -> ViewColumns:
    """The identifying columns of a metadata table, ready for a feature shard."""
    lens = np.asarray(meta.column("lens_rgba").combine_chunks().flatten(), dtype=np.float32).reshape(-1, 4)
    pose = np.stack(
        [np.asarray(meta.column(c), dtype=np.float32) for c in ("yaw_deg", "pitch_deg", "roll_deg")]
    )
    return ViewColumns(
        view_key=meta.column("view_key").to_pylist(),
        product_id=meta.column("product_id").to_pylist(),
        asset_sha256=meta.column("asset_sha256").to_pylist(),
        spec_hash=meta.column("spec_hash").to_pylist(),
        face_id=meta.column("face_id").to_pylist(),
        view_index=np.asarray(meta.column("view_index"), dtype=np.int32),
        pose_deg=pose.T.copy(),
        lens_rgba=lens,
        lens_style=meta.column("lens_style").to_pylist(),
    )
