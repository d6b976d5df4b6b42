"""Stage 3 of the face network: the glasses-presence decision, fitted on the eye band of the frozen trunk.

The pooled presence head of stages 1-2 reads the whole crop, and two trainings with one recipe
and seed gave the astronaut's bare photo 0.04 and 0.61: with one real bare face to learn from,
what it learnt about real faces depended on the run. `face.net.BandPresence` reads only the eye
band along the network's own pupils, and is fitted here with everything else frozen, so the
landmarks and the face verifier (which read the trunk) stay exactly as stages 1-2 left them.

Its data:
- procedural training renders (held-out identities excluded), cut from dlib's box with the
  training jitter and crop damage (face.training.data.training_crop), `render_views` draws of each;
- Grace Hopper's photo (the one real face training may use; the astronaut never is): bare (her
  frames inpainted), in her own frames, and wearing catalogue frames rendered onto it, each
  damaged as a whole upload (augment.phone_damage_mapped: the reframing and rescale move the
  detector's box, blur and JPEG soften the band), mirrored half the time, then found and cut as
  the query path does (face.detect.find_query_face at the query's thresholds);
- real portraits (heads/portraits.py: the training split only), with real glasses or bare,
  each as it is and as damaged uploads, colourised half the time; renders and Hopper's uploads are
  turned grey a share of the time, so that colour cannot decide presence either way. With one
  real face, presence on other real faces was a guess (14% of bare portraits searched, 19% of
  glasses refused); hundreds of real faces pin it down.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from glassfinder.embed.augment import phone_damage_mapped
from glassfinder.errors import PhotoError
from glassfinder.face.crop import crop_matrix, cut
from glassfinder.face.detect import QUERY_DETECTION_THRESHOLD, find_query_face
from glassfinder.face.net import VERIFIED_DETECTION_THRESHOLD, BandPresence, FaceAnalyser, FaceNet
from glassfinder.face.training.data import FaceData, training_crop
from glassfinder.face.training.photo_data import training_photo_wearing
from glassfinder.heads.portraits import Portrait, colour_swap, colourise, greyscale, read_rgb
from glassfinder.heads.training_photo import training_photo, training_photo_bare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PresenceConfig:
    seed: int = 6163
    render_views: int = 2
    #: Damaged uploads of Hopper: bare, and wearing frames (her own photo is one of the
    #: `worn_renders + 1` photos they are drawn from).
    bare_photos: int = 240
    worn_photos: int = 240
    worn_renders: int = 60
    #: The real uploads' weight in the loss, all together, against the renders' 1.
    real_weight: float = 1.0
    #: Crops of each training portrait: the first as it is, the others damaged as uploads.
    portrait_views: int = 4
    #: The portraits' weight in the loss, all together, against the renders' 1.
    portrait_weight: float = 2.0
    #: Share of portrait crops colourised, and of render and Hopper crops turned grey.
    colour_swap_p: float = 0.5
    grey_p: float = 0.3
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-2


@dataclass
class BandSet:
    """Eye-band features (float16, (n, BAND_CHANNELS, BAND_ROWS, BAND_COLS)), labels and sources."""

    band: np.ndarray
    worn: np.ndarray
    real: np.ndarray
    #: Per sample: 0 render, 1 Hopper upload, 2 portrait (empty: from `real`, no portraits).
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: What computing them cost (kept with the cache, so a rerun reports the whole cost).
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if len(self.source) != len(self.worn):
            self.source = np.where(self.real, 1, 0)


@torch.inference_mode()
def band_features(net: FaceNet, crops: list[np.ndarray], batch: int = 64) -> np.ndarray:
    out = []
    for s in range(0, len(crops), batch):
        x = torch.from_numpy(np.stack(crops[s : s + batch])).permute(0, 3, 1, 2).float() / 255.0
        out.append(net(x)["band"].numpy().astype(np.float16))
    return np.concatenate(out)


def render_crops(
    data: FaceData, views: int, rng: np.random.Generator, grey_p: float = 0.0
) -> tuple[list[np.ndarray], np.ndarray]:
    crops, worn = [], []
    for _ in range(views):
        for i in range(len(data.worn)):
            crop = training_crop(data, i, rng, augment=True)[0]
            crops.append(greyscale(crop) if rng.random() < grey_p else crop)
            worn.append(bool(data.worn[i]))
    return crops, np.asarray(worn)


def upload_crop(
    rgb: np.ndarray, rng: np.random.Generator, label: str, *, damage: bool = True
) -> np.ndarray | None:
    """The network crop of one upload of `rgb` (mirrored half the time, damaged as a whole upload
    unless `damage` is False), found and cut as the query path does; None where no face is found."""
    if rng.random() < 0.5:
        rgb = np.ascontiguousarray(rgb[:, ::-1])
    if damage:
        data, _ = phone_damage_mapped(rgb, rng)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise RuntimeError("a damaged upload did not decode")
        rgb = np.ascontiguousarray(decoded[:, :, ::-1])
    try:
        face = find_query_face(
            rgb, label, threshold=QUERY_DETECTION_THRESHOLD, weak_threshold=VERIFIED_DETECTION_THRESHOLD
        )
    except PhotoError:
        return None
    return cut(rgb, crop_matrix(np.asarray(face.box_xyxy, np.float32)))


def portrait_crops(
    portraits: Sequence[Portrait], views: int, rng: np.random.Generator, colour_p: float
) -> tuple[list[np.ndarray], np.ndarray]:
    """`views` crops of each portrait (the first undamaged), colourised with probability
    `colour_p`; a view where no face is found is left out (and logged)."""
    crops, worn = [], []
    missed = 0
    for portrait in portraits:
        rgb = read_rgb(portrait.path)
        for view in range(views):
            crop = upload_crop(colour_swap(rgb, rng, colour_p), rng, portrait.path.name, damage=view > 0)
            if crop is None:
                missed += 1
                continue
            crops.append(crop)
            worn.append(portrait.worn)
    if missed:
        log.info("presence data: no face found on %d of %d portrait views", missed, views * len(portraits))
    return crops, np.asarray(worn, bool)


def upload_crops(
    photos: list[np.ndarray], count: int, rng: np.random.Generator, label: str, grey_p: float = 0.0
) -> list[np.ndarray]:
    """`count` network crops of uploads drawn from `photos`: mirrored half the time, turned grey
    with probability `grey_p`, damaged as a whole upload, found and cut as the query path does.
    Uploads where no face is found are drawn again (a few percent: the query path refuses those
    before presence is asked)."""
    crops: list[np.ndarray] = []
    missed = 0
    while len(crops) < count:
        rgb = photos[int(rng.integers(len(photos)))]
        if rng.random() < grey_p:
            rgb = greyscale(rgb)
        crop = upload_crop(rgb, rng, label)
        if crop is None:
            missed += 1
            if missed > count:
                raise PhotoError(label, "no_face", f"no face found on {missed} damaged uploads")
            continue
        crops.append(crop)
    if missed:
        log.info("presence data: no face found on %d damaged %s uploads (drawn again)", missed, label)
    return crops


def trunk_digest(net: FaceNet) -> str:
    """What the band features depend on: every weight but the presence head's."""
    h = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        if not key.startswith("band_presence."):
            h.update(key.encode())
            h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def build_band_set(
    net: FaceNet,
    data: FaceData,
    assets: list[tuple[str, bytes]],
    work: Path,
    cfg: PresenceConfig,
    portraits: Sequence[Portrait] = (),
) -> BandSet:
    """The features stage 3 fits on (training identities, Hopper, the training portraits),
    computed once per trunk, config and portrait set into `work`."""
    what = (trunk_digest(net), cfg.seed, cfg.render_views, cfg.bare_photos, cfg.worn_photos)
    extra = (cfg.portrait_views, cfg.colour_swap_p, cfg.grey_p, [(p.id, p.worn) for p in portraits])
    key = hashlib.sha256(repr((*what, cfg.worn_renders, len(data.worn), *extra)).encode()).hexdigest()[:12]
    path = work / f"presence-band-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return BandSet(z["band"], z["worn"], z["real"], z["source"], float(z["seconds"]))
    net.eval()
    rng = np.random.default_rng([cfg.seed, 1])
    t0 = time.perf_counter()
    crops, worn = render_crops(data.subset(~data.held_out), cfg.render_views, rng, cfg.grey_p)
    renders = band_features(net, crops)
    log.info("presence data: %d render crops in %.0f s", len(crops), time.perf_counter() - t0)
    wearing = [training_photo(), *training_photo_wearing(assets, cfg.worn_renders)]
    bare = upload_crops(
        [training_photo_bare()], cfg.bare_photos, rng, "grace_hopper.jpg (inpainted)", cfg.grey_p
    )
    worn_up = upload_crops(wearing, cfg.worn_photos, rng, "grace_hopper.jpg (wearing frames)", cfg.grey_p)
    training_face = band_features(net, bare + worn_up)
    log.info("presence data: %d Hopper uploads in %.0f s", len(training_face), time.perf_counter() - t0)
    p_crops, p_worn = portrait_crops(portraits, cfg.portrait_views, rng, cfg.colour_swap_p)
    real = band_features(net, p_crops) if p_crops else np.zeros((0, *renders.shape[1:]), renders.dtype)
    log.info("presence data: %d portrait crops in %.0f s", len(real), time.perf_counter() - t0)
    source = np.repeat([0, 1, 2], [len(renders), len(training_face), len(real)])
    out = BandSet(
        band=np.concatenate([renders, training_face, real]),
        worn=np.concatenate([worn, np.zeros(len(bare), bool), np.ones(len(worn_up), bool), p_worn]),
        real=source > 0,
        source=source,
        seconds=round(time.perf_counter() - t0, 1),
    )
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out.__dict__)
    tmp.replace(path)
    return out


def fit_head(head: BandPresence, bands: BandSet, cfg: PresenceConfig) -> dict[str, Any]:
    """Fit `head` afresh (seeded) on `bands`: weighted BCE where the real uploads together weigh
    `real_weight` against the renders' 1, each side balanced between worn and bare."""
    torch.manual_seed(cfg.seed)
    for module in head.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.reset_parameters()
    weight = np.zeros(len(bands.worn), np.float32)
    for source, share in enumerate((1.0, cfg.real_weight, cfg.portrait_weight)):
        for worn in (False, True):
            sel = (bands.source == source) & (bands.worn == worn)
            if sel.any():
                weight[sel] = share / 2 / sel.sum()
    weight *= len(weight) / weight.sum()
    x = torch.from_numpy(bands.band)
    y = torch.from_numpy(bands.worn.astype(np.float32))
    w = torch.from_numpy(weight)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(y) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    rng = np.random.default_rng([cfg.seed, 2])
    head.train()
    t0 = time.perf_counter()
    loss_value = 0.0
    for _ in range(cfg.epochs):
        order = torch.from_numpy(rng.permutation(len(y)))
        total = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            loss = F.binary_cross_entropy_with_logits(head(x[idx].float()), y[idx], weight=w[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        loss_value = total / steps_per_epoch
    head.eval()
    return {
        "samples": {
            "renders": int((bands.source == 0).sum()),
            "real_bare": int(((bands.source == 1) & ~bands.worn).sum()),
            "real_worn": int(((bands.source == 1) & bands.worn).sum()),
            "portrait_bare": int(((bands.source == 2) & ~bands.worn).sum()),
            "portrait_worn": int(((bands.source == 2) & bands.worn).sum()),
        },
        "final_loss": round(loss_value, 4),
        "fit_seconds": round(time.perf_counter() - t0, 1),
    }


def fit_band_presence(
    net: FaceNet,
    data: FaceData,
    assets: list[tuple[str, bytes]],
    work: Path,
    cfg: PresenceConfig,
    portraits: Sequence[Portrait] = (),
) -> dict[str, Any]:
    """Stage 3: fit `net.band_presence` (in place) on the frozen trunk's eye-band features."""
    bands = build_band_set(net, data, assets, work, cfg, portraits)
    report = fit_head(net.band_presence, bands, cfg)
    net.eval()
    report["features_seconds"] = bands.seconds
    report["seconds"] = round(bands.seconds + report["fit_seconds"], 1)
    return report


def upload_check(net: FaceNet, threshold: float, count: int, seed: int) -> dict[str, Any]:
    """Presence on fresh damaged uploads of Hopper's photo (draws stage 3 never trained on; her
    face it did): bare, and in her own frames. A check that real faces land on the right side of
    the threshold set on renders, not a figure about unseen faces (bench/face_bench.py has those)."""
    rng = np.random.default_rng([seed, 3])
    out: dict[str, Any] = {}
    for name, photo, worn in (("bare", training_photo_bare(), False), ("own_frames", training_photo(), True)):
        crops = upload_crops([photo], count, rng, f"grace_hopper.jpg ({name})")
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
            p = torch.sigmoid(net(x)["presence_band"]).numpy()
        wrong = (p < threshold) if worn else (p >= threshold)
        out[name] = {
            "uploads": count,
            "refused" if worn else "accepted": int(wrong.sum()),
            "p_median": round(float(np.median(p)), 4),
        }
    return out


@dataclass
class PortraitViews:
    """What the network says of views of labelled portraits, found as the query path finds faces.
    `found` False: no face found (p_* are then 0). `variant`: 0 as it is, 1 colourised, 2 damaged."""

    worn: np.ndarray
    found: np.ndarray
    p_glasses: np.ndarray
    p_face: np.ndarray
    shape_ok: np.ndarray
    variant: np.ndarray


def portrait_views(
    analyser: FaceAnalyser, portraits: Sequence[Portrait], damaged: int, seed: int
) -> PortraitViews:
    """Each portrait as it is (grey), colourised, and `damaged` phone-damaged uploads (colourised
    half the time), detected at the query's thresholds and analysed (the verifier included)."""
    rng = np.random.default_rng([seed, 4])
    rows: list[tuple[bool, bool, float, float, bool, int]] = []
    for portrait in portraits:
        rgb = read_rgb(portrait.path)
        variants: list[tuple[np.ndarray, int]] = [(rgb, 0), (colourise(rgb, rng), 1)]
        for _ in range(damaged):
            data, _m = phone_damage_mapped(colour_swap(rgb, rng, 0.5), rng)
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if decoded is None:
                raise RuntimeError("a damaged upload did not decode")
            variants.append((np.ascontiguousarray(decoded[:, :, ::-1]), 2))
        for image, variant in variants:
            try:
                face = find_query_face(
                    image,
                    portrait.path.name,
                    threshold=QUERY_DETECTION_THRESHOLD,
                    weak_threshold=VERIFIED_DETECTION_THRESHOLD,
                )
            except PhotoError:
                rows.append((portrait.worn, False, 0.0, 0.0, False, variant))
                continue
            a = analyser.analyse(image, face.box_xyxy)
            rows.append(
                (
                    portrait.worn,
                    True,
                    a.glasses_probability,
                    a.face_probability,
                    a.holds_a_face_shape,
                    variant,
                )
            )
    table = np.asarray(rows, dtype=object).reshape(len(rows), 6)
    kinds = (bool, bool, np.float64, np.float64, bool, np.int64)
    return PortraitViews(*(table[:, k].astype(kind) for k, kind in enumerate(kinds)))


def portrait_figures(views: PortraitViews, threshold: float, face_threshold: float) -> dict[str, Any]:
    """The query path's decisions on portrait views: `no_face` (not found, not verified, or not a
    face's shape), and among the rest the false refusals of glasses and false accepts of bare eyes."""
    face = views.found & views.shape_ok & (views.p_face >= face_threshold)
    searched = face & (views.p_glasses >= threshold)
    out: dict[str, Any] = {}
    for name, sel in (
        ("all", np.ones(len(views.worn), bool)),
        ("as_is", views.variant == 0),
        ("colourised", views.variant == 1),
        ("damaged", views.variant == 2),
    ):
        worn, bare = sel & views.worn, sel & ~views.worn
        out[name] = {
            "views": int(sel.sum()),
            "no_face": round(float((~face[sel]).mean()), 4) if sel.any() else None,
            "false_refusal": round(float((~searched[worn]).mean()), 4) if worn.any() else None,
            "false_accept": round(float(searched[bare].mean()), 4) if bare.any() else None,
        }
    grey, colour = views.variant == 0, views.variant == 1
    if grey.sum() == colour.sum():  # the same portraits in the same order, as it is and colourised
        out["grey_colour_disagree"] = int((searched[grey] != searched[colour]).sum())
    return out
