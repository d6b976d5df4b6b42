"""Stage 3 of the face network: the glasses-presence decision, fitted on the eye band of the frozen trunk.

The pooled presence head of stages 1-2 reads the whole crop, and two trainings with one recipe
and seed gave the astronaut's bare photo 0.04 and 0.61: with one real bare face to learn from,
what it learnt about real faces depended on the run. `face_net.BandPresence` reads only the eye
band along the network's own pupils, and is fitted here with everything else frozen, so the
landmarks and the face verifier (which read the trunk) stay exactly as stages 1-2 left them.

Its data:
- procedural training renders (held-out identities excluded), cut from dlib's box with the
  training jitter and crop damage (face_data.training_crop), `render_views` draws of each;
- Grace Hopper's photo (the one real face training may use; the astronaut never is): bare (her
  frames inpainted), in her own frames, and wearing catalogue frames rendered onto it, each
  damaged as a whole upload (augment.phone_damage_mapped: the reframing and rescale move the
  detector's box, blur and JPEG soften the band), mirrored half the time, then found and cut as
  the query path does (faces.photos.find_query_face at the query's thresholds).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from glassfinder.embed.augment import phone_damage_mapped
from glassfinder.embed.face_data import DETECT_THRESHOLD, FaceData, crop_matrix, cut, training_crop
from glassfinder.embed.face_net import VERIFIED_DETECTION_THRESHOLD, BandPresence, FaceNet
from glassfinder.embed.face_photo_data import hopper_bare, hopper_photo, hopper_photos_wearing
from glassfinder.faces.photos import PhotoError, find_query_face

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
    #: What computing them cost (kept with the cache, so a rerun reports the whole cost).
    seconds: float = 0.0


@torch.inference_mode()
def band_features(net: FaceNet, crops: list[np.ndarray], batch: int = 64) -> np.ndarray:
    out = []
    for s in range(0, len(crops), batch):
        x = torch.from_numpy(np.stack(crops[s : s + batch])).permute(0, 3, 1, 2).float() / 255.0
        out.append(net(x)["band"].numpy().astype(np.float16))
    return np.concatenate(out)


def render_crops(data: FaceData, views: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    crops, worn = [], []
    for _ in range(views):
        for i in range(len(data.worn)):
            crops.append(training_crop(data, i, rng, augment=True)[0])
            worn.append(bool(data.worn[i]))
    return crops, np.asarray(worn)


def upload_crops(
    photos: list[np.ndarray], count: int, rng: np.random.Generator, label: str
) -> list[np.ndarray]:
    """`count` network crops of uploads drawn from `photos`: mirrored half the time, damaged as a
    whole upload, found and cut as the query path does. Uploads where no face is found are drawn
    again (a few percent: the query path refuses those before presence is asked)."""
    crops: list[np.ndarray] = []
    missed = 0
    while len(crops) < count:
        rgb = photos[int(rng.integers(len(photos)))]
        if rng.random() < 0.5:
            rgb = np.ascontiguousarray(rgb[:, ::-1])
        data, _ = phone_damage_mapped(rgb, rng)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise RuntimeError("a damaged upload did not decode")
        damaged = np.ascontiguousarray(decoded[:, :, ::-1])
        try:
            face = find_query_face(
                damaged, label, threshold=DETECT_THRESHOLD, weak_threshold=VERIFIED_DETECTION_THRESHOLD
            )
        except PhotoError:
            missed += 1
            if missed > count:
                raise
            continue
        crops.append(cut(damaged, crop_matrix(np.asarray(face.box_xyxy, np.float32))))
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
    net: FaceNet, data: FaceData, assets: list[tuple[str, bytes]], work: Path, cfg: PresenceConfig
) -> BandSet:
    """The features stage 3 fits on (training identities and Hopper), computed once per trunk
    and config into `work`."""
    what = (trunk_digest(net), cfg.seed, cfg.render_views, cfg.bare_photos, cfg.worn_photos)
    key = hashlib.sha256(repr((*what, cfg.worn_renders, len(data.worn))).encode()).hexdigest()[:12]
    path = work / f"presence-band-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return BandSet(z["band"], z["worn"], z["real"], float(z["seconds"]) if "seconds" in z else 0.0)
    net.eval()
    rng = np.random.default_rng([cfg.seed, 1])
    t0 = time.perf_counter()
    crops, worn = render_crops(data.subset(~data.held_out), cfg.render_views, rng)
    renders = band_features(net, crops)
    log.info("presence data: %d render crops in %.0f s", len(crops), time.perf_counter() - t0)
    wearing = [hopper_photo(), *hopper_photos_wearing(assets, cfg.worn_renders)]
    bare = upload_crops([hopper_bare()], cfg.bare_photos, rng, "grace_hopper.jpg (inpainted)")
    worn_up = upload_crops(wearing, cfg.worn_photos, rng, "grace_hopper.jpg (wearing frames)")
    real = band_features(net, bare + worn_up)
    log.info("presence data: %d real uploads in %.0f s", len(real), time.perf_counter() - t0)
    out = BandSet(
        band=np.concatenate([renders, real]),
        worn=np.concatenate([worn, np.zeros(len(bare), bool), np.ones(len(worn_up), bool)]),
        real=np.concatenate([np.zeros(len(renders), bool), np.ones(len(real), bool)]),
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
    for real, share in ((False, 1.0), (True, cfg.real_weight)):
        for worn in (False, True):
            sel = (bands.real == real) & (bands.worn == worn)
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
            "renders": int((~bands.real).sum()),
            "real_bare": int((bands.real & ~bands.worn).sum()),
            "real_worn": int((bands.real & bands.worn).sum()),
        },
        "final_loss": round(loss_value, 4),
        "fit_seconds": round(time.perf_counter() - t0, 1),
    }


def fit_band_presence(
    net: FaceNet, data: FaceData, assets: list[tuple[str, bytes]], work: Path, cfg: PresenceConfig
) -> dict[str, Any]:
    """Stage 3: fit `net.band_presence` (in place) on the frozen trunk's eye-band features."""
    bands = build_band_set(net, data, assets, work, cfg)
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
    for name, photo, worn in (("bare", hopper_bare(), False), ("own_frames", hopper_photo(), True)):
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
