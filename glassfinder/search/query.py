"""One query: photo bytes -> face box -> face analysis -> aligned eye band -> embedding -> top-k products.

dlib's HOG detector finds the face; the face-analysis network (face/net.py) places the eyes
and says whether glasses are worn. Anything that is not a face wearing glasses is refused with a
reason code and the message the shopper sees. The engine serves one (index version, model) pair
at a time and swaps to a new pair atomically when the index's CURRENT moves, so a request never
mixes an index with another version's model.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glassfinder import layout
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.embed.align import align_crop
from glassfinder.embed.infer import Embedder
from glassfinder.embed.registry import load_model
from glassfinder.errors import (
    BadInputError,
    CorruptIndexFileError,
    CorruptStoreFileError,
    ImageRefusedError,
    ImageTooLargeError,
    IndexStoreError,
    NotAPlainFileError,
    ObjectNotFoundError,
    PhotoError,
    QueryRefusedError,
    StoreStateError,
)
from glassfinder.face.decode import DEFAULT_MAX_PIXELS, DecodeBudget, decode_image
from glassfinder.face.detect import QUERY_DETECTION_THRESHOLD, QueryFace, find_query_face
from glassfinder.face.landmarks import FACE_LANDMARKS
from glassfinder.face.net import (
    MAX_SHAPE_DISAGREEMENT,
    VERIFIED_DETECTION_THRESHOLD,
    FaceAnalyser,
    FaceAnalysis,
    packaged_analyser,
)
from glassfinder.index.reader import IndexReader
from glassfinder.index.versions import newest_verified_version
from glassfinder.lru import BoundedCache
from glassfinder.render.packshot import PACKSHOT_SPEC
from glassfinder.store.base import ObjectStore
from glassfinder.store.shards import read_shard

log = logging.getLogger(__name__)

#: Detection runs at these sizes first (fast), then at the larger one if no face was found
#: (see face.detect.find_query_face). 320 first: boxes from the 256 px pass are looser or
#: tighter by a pyramid step, and the glasses presence of a bare face rose with a looser box.
DETECT_FAST_SIDES_PX = (320, 256)
DETECT_MAX_SIDE_PX = 1024
DEFAULT_TOP_K = 10
MAX_TOP_K = 100
#: Largest photo file `glassfinder search` reads (the service's uploads have their own limit).
MAX_PHOTO_BYTES = 64 * 1024 * 1024


def read_photo(path: Path, *, max_bytes: int = MAX_PHOTO_BYTES) -> bytes:
    """A photo file's bytes, refused (`upload_too_large`) past `max_bytes` without reading on: a
    path naming a huge file must not cost its size in memory before the pixel check runs."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise QueryRefusedError("upload_too_large", f"{path.name} is larger than {max_bytes:,} bytes")
    return data


def decode_photo(
    data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, budget: DecodeBudget | None = None
) -> np.ndarray:
    """(h, w, 3) uint8 RGB of an uploaded photo, upright, through the one guarded decoder
    (glassfinder.face.decode: pixel and memory budgets, JPEG draft, truncation refused).

    Every way a decoder can fail on hostile bytes ends in a QueryRefusedError (`too_many_pixels`
    as ImageTooLargeError, else `not_an_image` or `unsupported_format`): an upload must never
    surface as a traceback or a 500. `budget` wins over `max_pixels` when given.
    """
    budget = budget or DecodeBudget(max_pixels=max_pixels)
    try:
        return decode_image(data, name, budget)
    except ImageRefusedError as exc:
        cls = ImageTooLargeError if exc.reason in ImageRefusedError.TOO_LARGE else QueryRefusedError
        raise cls(exc.reason, exc.detail) from exc


def find_face(rgb: np.ndarray, name: str) -> QueryFace:
    """The face a query searches, found as the query path does, or QueryRefusedError."""
    try:
        return find_query_face(
            rgb,
            name,
            threshold=QUERY_DETECTION_THRESHOLD,
            weak_threshold=VERIFIED_DETECTION_THRESHOLD,  # where no face reaches the threshold
            fast_sides_px=DETECT_FAST_SIDES_PX,
            full_side_px=DETECT_MAX_SIDE_PX,
        )
    except PhotoError as exc:
        raise QueryRefusedError(exc.reason, str(exc).removeprefix("photo ")) from exc


def check_analysis(
    analysis: FaceAnalysis, threshold: float, name: str, box_xyxy: tuple[int, int, int, int]
) -> None:
    """Refuse what the face-analysis network says is not a face wearing glasses: a detection
    whose landmarks do not hold a face's shape or that the face verifier does not take for a
    face (`no_face`: a patch, a print, a texture), then a face without glasses (`no_glasses`)."""
    if not analysis.verified_as_face:
        raise QueryRefusedError(
            "no_face",
            f"{name}: what was detected at {list(box_xyxy)} does not look like a face "
            f"(p_face={analysis.face_probability:.2f} < {analysis.face_threshold:.2f})",
        )
    if not analysis.holds_a_face_shape:
        raise QueryRefusedError(
            "no_face",
            f"{name}: what was detected at {list(box_xyxy)} does not hold a face's shape (its "
            f"landmarks disagree by {analysis.shape_disagreement:.2f} of the eye distance, "
            f"more than {MAX_SHAPE_DISAGREEMENT:.2f})",
        )
    if analysis.glasses_probability < threshold:
        raise QueryRefusedError(
            "no_glasses",
            f"{name}: the face does not seem to wear glasses "
            f"(p={analysis.glasses_probability:.2f} < {threshold:.2f})",
        )


@dataclass(frozen=True)
class Hit:
    rank: int
    product_id: str
    score: float
    view_key: str
    product: dict[str, Any]


@dataclass
class QueryResult:
    """What a query found, with what it measured on the way (photo pixels)."""

    name: str
    index: str
    index_version: int
    model_sha: str
    face_model_sha: str
    image_size: tuple[int, int]  # width, height
    face_box_xyxy: tuple[int, int, int, int]
    faces_found: int
    face_at_border: bool
    eyes_xy: list[list[float]]  # the subject's left eye first
    landmarks_xy: list[list[float]]  # in LANDMARK_NAMES order
    glasses_box_xyxy: list[float]
    detection_score: float
    detection_weak: bool  # below QUERY_DETECTION_THRESHOLD: searched because the verifier took it
    face_probability: float
    glasses_probability: float
    glasses_threshold: float
    shape_disagreement: float
    hits: list[Hit]
    timings_ms: dict[str, float]
    aligned_crop: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "index_version": self.index_version,
            "model_sha": self.model_sha,
            "face_model_sha": self.face_model_sha,
            "image_size": list(self.image_size),
            "face_box_xyxy": list(self.face_box_xyxy),
            "faces_found": self.faces_found,
            "face_at_border": self.face_at_border,
            "eyes_xy": self.eyes_xy,
            "landmarks_xy": self.landmarks_xy,
            "landmark_names": list(FACE_LANDMARKS),
            "glasses_box_xyxy": self.glasses_box_xyxy,
            "detection_score": self.detection_score,
            "detection_weak": self.detection_weak,
            "face_probability": round(self.face_probability, 4),
            "glasses_probability": round(self.glasses_probability, 4),
            "glasses_threshold": round(self.glasses_threshold, 4),
            "shape_disagreement": round(self.shape_disagreement, 4),
            "hits": [
                {"rank": h.rank, "product_id": h.product_id, "score": round(h.score, 4), "product": h.product}
                for h in self.hits
            ],
            "timings_ms": self.timings_ms,
        }


@dataclass(frozen=True)
class Serving:
    """What a query runs against; replaced whole when CURRENT moves."""

    reader: IndexReader  # never reloaded: a new CURRENT gets a new Serving
    embedder: Embedder
    model_sha: str
    face_model_sha: str
    face: FaceAnalyser
    products: dict[str, dict[str, Any]]


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, float) and not np.isfinite(value):
            value = None
        elif isinstance(value, (list, tuple)):
            value = [float(v) if isinstance(v, float) else v for v in value]
        out[key] = value
    return out


def catalog_products(store: ObjectStore) -> dict[str, dict[str, Any]]:
    """Display metadata per product from the store's catalogue manifest ({} if there is none)."""
    try:
        rows = read_manifest_rows(store, CATALOG_MANIFEST_KEY)
    except ObjectNotFoundError:
        return {}
    except StoreStateError:
        raise
    except Exception as exc:  # ManifestError, or pyarrow's OSError/ArrowInvalid on junk inside the file
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CorruptStoreFileError(
            f"catalogue table {store.uri}/{CATALOG_MANIFEST_KEY} cannot be read ({type(exc).__name__}: "
            f"{first_line}); fix: run `glassfinder catalog ingest` again (or restore the file)"
        ) from exc
    keep = ("product_id", "display_name", "kind", "colour_name", "shape_family", "rim", "material",
            "lens_style", "lens_width_mm", "bridge_mm", "temple_mm")  # fmt: skip
    return {r["product_id"]: _json_safe({k: r.get(k) for k in keep if k in r}) for r in rows}


class QueryEngine:
    """Search photos against the CURRENT version of one index; safe to share between threads."""

    def __init__(
        self, store: ObjectStore, index_name: str, *, device: str | None = None, fallback: bool = False
    ) -> None:
        """fallback: when CURRENT (or the version it names) cannot be served, start on the newest
        version that verifies and say so in `degraded` (what `glassfinder serve` does, so a
        broken pointer does not take search down); without it the error names that version."""
        self.store = store
        self.index_name = index_name
        self.device = device
        self._lock = threading.Lock()
        self._embedders: BoundedCache[str, Embedder] = BoundedCache(2)
        self._thumbs: BoundedCache[tuple[str, str], bytes] = BoundedCache(2048)
        self._packshot_views: BoundedCache[str, tuple[str, ...]] = BoundedCache(8192)
        #: Why the version served is not CURRENT's (None when it is): for /healthz and the logs.
        self.degraded: str | None = None
        self._failed_etag: str | None = None
        try:
            self._serving = self._load()
        except (IndexStoreError, NotAPlainFileError) as exc:
            good = newest_verified_version(store, index_name)
            if good is None:
                raise
            fix = f"fix: `glassfinder index promote v{good}` (the newest version that verifies)"
            if not fallback:
                raise CorruptIndexFileError(f"{exc}; {fix}") from exc
            self._serving = self._load(version=good)
            self.degraded = f"CURRENT cannot be served ({exc}); serving v{good} instead; {fix}"
            log.error("search: %s", self.degraded)
            # The reload loop must not read this same broken CURRENT again (and replace the
            # message that says how to fix it) until someone moves it.
            with contextlib.suppress(Exception):
                self._failed_etag = store.head(layout.index_current_key(index_name)).etag

    # --- loading and hot reload ---------------------------------------------------------------
    def _embedder(self, model_ref: str, sha: str) -> Embedder:
        cached = self._embedders.get(sha)
        if cached is None:
            cached = Embedder(
                load_model(self.store, model_ref).model, device=self.device, batch_size=1, fold=True
            )
            self._embedders.put(sha, cached)
        return cached

    def _load(self, version: int | None = None) -> Serving:
        reader = IndexReader(self.store, self.index_name, version=version)
        manifest = reader.manifest
        sha = str(manifest["model_sha"])
        embedder = self._embedder(f"{manifest['model']}@{sha}", sha)
        face_sha, face = packaged_analyser()
        return Serving(reader, embedder, sha, face_sha, face, catalog_products(self.store))

    @property
    def serving(self) -> Serving:
        return self._serving

    def refresh(self) -> bool:
        """Serve CURRENT's version if it moved; True when it changed.

        Any error while reading the new version (a broken CURRENT, a corrupt file, an outage, a
        bug) raises and leaves the old one serving, with `degraded` saying why; the same broken
        CURRENT is not read again until it moves, and the next good one clears `degraded`.
        """
        key = layout.index_current_key(self.index_name)
        try:
            info = self.store.head(key)
        except Exception as exc:
            self._degrade(f"{self.store.uri}/{key} cannot be read ({exc})", None)
            raise

        def unchanged() -> bool:
            return info.etag in (self._serving.reader.etag, self._failed_etag)

        if unchanged():
            return False
        with self._lock:
            if unchanged():  # another thread reloaded while this one waited for the lock
                return False
            try:
                fresh = self._load()
            except Exception as exc:
                self._degrade(f"CURRENT ({self._named_version(key)}) cannot be served ({exc})", info.etag)
                raise
            old = self._serving
            self._serving = fresh
            self.degraded = None
            self._failed_etag = None
        log.info(
            "search: now serving %s v%d (was v%d)", self.index_name, fresh.reader.version, old.reader.version
        )
        return True

    def _named_version(self, key: str) -> str:
        """What CURRENT says it names, for the log (its raw bytes when they are not JSON)."""
        try:
            raw = self.store.get(key)[:200]
        except Exception as exc:
            return f"unreadable: {type(exc).__name__}"
        try:
            body = json.loads(raw)
            return f"names version {body.get('version')!r}" if isinstance(body, dict) else f"holds {raw!r}"
        except ValueError:
            return f"holds {raw!r}"

    def _degrade(self, why: str, etag: str | None) -> None:
        self._failed_etag = etag
        self.degraded = f"{why}; still serving v{self._serving.reader.version}"
        log.error("search: index %s: %s", self.index_name, self.degraded)

    # --- the query ----------------------------------------------------------------------------
    def search(
        self,
        data: bytes,
        name: str,
        *,
        k: int = DEFAULT_TOP_K,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        budget: DecodeBudget | None = None,
    ) -> QueryResult:
        """Top-k products for a photo, or QueryRefusedError saying why it cannot be searched.

        budget: the decoder's pixel and memory budget (default: `max_pixels` and the decoder's
        defaults)."""
        if not 1 <= k <= MAX_TOP_K:
            raise BadInputError(f"top-k must be between 1 and {MAX_TOP_K}, got {k}")
        s = self._serving  # one (index, model) pair for the whole query
        t0 = time.perf_counter()
        rgb = decode_photo(data, name, max_pixels=max_pixels, budget=budget)
        t1 = time.perf_counter()
        face = find_face(rgb, name)
        if face.faces_found > 1:
            log.info("search %s: %d faces found, searching the largest", name, face.faces_found)
        t2 = time.perf_counter()
        analysis = s.face.analyse(rgb, face.box_xyxy)
        check_analysis(analysis, s.face.threshold, name, face.box_xyxy)
        p_glasses = analysis.glasses_probability
        t3 = time.perf_counter()
        crop = align_crop(rgb, analysis.eyes_xy, s.embedder.geometry)
        vector = s.embedder.embed(crop[None])
        t4 = time.perf_counter()
        (found,) = s.reader.search(vector, k)
        t5 = time.perf_counter()
        hits = [
            Hit(
                i + 1,
                h.product_id,
                h.score,
                h.view_key,
                s.products.get(h.product_id, {"product_id": h.product_id}),
            )
            for i, h in enumerate(found)
        ]
        ms = lambda a, b: round((b - a) * 1000, 2)  # noqa: E731
        return QueryResult(
            name=name,
            index=self.index_name,
            index_version=s.reader.version,
            model_sha=s.model_sha,
            face_model_sha=s.face_model_sha,
            image_size=(rgb.shape[1], rgb.shape[0]),
            face_box_xyxy=face.box_xyxy,
            faces_found=face.faces_found,
            face_at_border=face.at_border,
            eyes_xy=analysis.eyes_xy.round(1).tolist(),
            landmarks_xy=analysis.landmarks_xy.round(1).tolist(),
            glasses_box_xyxy=analysis.glasses_box_xyxy.round(1).tolist(),
            detection_score=face.score,
            detection_weak=face.weak,
            face_probability=analysis.face_probability,
            glasses_probability=p_glasses,
            glasses_threshold=s.face.threshold,
            shape_disagreement=analysis.shape_disagreement,
            hits=hits,
            timings_ms={
                "decode": ms(t0, t1),
                "detect": ms(t1, t2),
                "analyse": ms(t2, t3),
                "align_embed": ms(t3, t4),
                "search": ms(t4, t5),
                "total": ms(t0, t5),
            },
            aligned_crop=crop,
        )

    # --- product pages ------------------------------------------------------------------------
    def product(self, product_id: str) -> dict[str, Any] | None:
        """Display metadata of an indexed product (None when CURRENT does not hold it)."""
        s = self._serving
        views = s.reader.views_of(product_id)
        if not views:
            return None
        return {**s.products.get(product_id, {"product_id": product_id}), "indexed_views": len(views)}

    def asset_of(self, product_id: str) -> str | None:
        """The asset sha256 CURRENT indexed for a product (None when it holds none): what its
        packshots and 3D model are looked up by, so they always show the frame that was found."""
        views = self._serving.reader.views_of(product_id)
        return str(views[0]).split("/")[0] if views else None

    def packshot_views(self, product_id: str) -> tuple[str, ...]:
        """The packshot views the store holds for a product's indexed asset (cached per asset:
        packshots are content-addressed, never rewritten)."""
        sha = self.asset_of(product_id)
        if sha is None:
            return ()
        cached = self._packshot_views.get(sha)
        if cached is not None and len(cached) == len(PACKSHOT_SPEC.view_names):
            return cached
        have = tuple(
            v
            for v in PACKSHOT_SPEC.view_names
            if self.store.exists(layout.packshot_key(PACKSHOT_SPEC.spec_hash, sha, v))
        )
        self._packshot_views.put(sha, have)
        return have

    def packshot(self, product_id: str, view: str) -> bytes | None:
        """PNG of one packshot view of a product's indexed asset (None when there is none)."""
        sha = self.asset_of(product_id)
        if sha is None or view not in PACKSHOT_SPEC.view_names:
            return None
        try:
            return self.store.get(layout.packshot_key(PACKSHOT_SPEC.spec_hash, sha, view))
        except ObjectNotFoundError:
            return None

    def model_glb(self, product_id: str) -> bytes | None:
        """The normalised GLB of a product's indexed asset (None when it is not in the store)."""
        sha = self.asset_of(product_id)
        if sha is None:
            return None
        try:
            return self.store.get(layout.catalog_asset_key(sha))
        except ObjectNotFoundError:
            return None

    def thumbnail(self, product_id: str, *, size_px: int = 192) -> bytes | None:
        """JPEG of the product's first indexed try-on view (None for a product not indexed)."""
        s = self._serving
        views = s.reader.views_of(product_id)
        if not views:
            return None
        key = (f"{s.reader.version}", product_id)
        cached = self._thumbs.get(key)
        if cached is not None:
            return cached
        view = views[0]
        asset_sha, spec_hash = view.split("/")[:2]
        table = read_shard(
            self.store, layout.render_shard_key(spec_hash, asset_sha), "image", columns=["view_key", "image"]
        )
        keys = table.column("view_key").to_pylist()
        row = keys.index(view) if view in keys else 0
        img = Image.open(io.BytesIO(table.column("image")[row].as_py())).convert("RGB")
        img.thumbnail((size_px, size_px))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        self._thumbs.put(key, data)
        return data
