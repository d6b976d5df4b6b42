"""Train, calibrate, measure and package the face-analysis network (see face/training/train.py).

Held-out identities (face index % VAL_EVERY == 0) are split in two by identity: one half sets the
glasses-presence threshold (see `calibrate`), the other half is where every reported
figure comes from, beside dlib's 5-point eye centres on the same images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dlib
import numpy as np
import torch
from torch.nn import functional as F

from glassfinder.face.crop import INPUT_PX
from glassfinder.face.detect import _dlib
from glassfinder.face.landmarks import FACE_LANDMARKS
from glassfinder.face.net import STRIDE, FaceAnalyser, FaceNet, neighbour_table, save_weights
from glassfinder.face.training.data import (
    LENS_CODES,
    VAL_EVERY,
    FaceData,
    concat,
    load_shards,
    proxy_box,
    training_crop,
)
from glassfinder.face.training.photo_data import PHOTO_FACE_INDEX
from glassfinder.face.training.presence import (
    PortraitViews,
    PresenceConfig,
    fit_band_presence,
    portrait_figures,
    portrait_views,
    upload_check,
)
from glassfinder.face.training.views import FACE_SPEC
from glassfinder.heads.portraits import Portrait, split_record
from glassfinder.nets.imagenet import SOURCE, load_mobilenet_v2_state
from glassfinder.nets.mobilenet import load_features
from glassfinder.nets.packaged import MODELS_DIR, card_path, weights_path
from glassfinder.nets.weights import model_sha

log = logging.getLogger(__name__)

TARGET_FALSE_REFUSAL = 0.02
GRID = INPUT_PX // STRIDE


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 14
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 6161
    w_offset: float = 5.0
    w_neighbour: float = 1.0
    w_presence: float = 1.0
    w_box: float = 2.0
    #: Stage 2 (adapt_to_photos): real-face samples and how long / how fast they are trained.
    photo_worn: int = 160
    photo_bare_copies: int = 160
    photo_epochs: int = 3
    photo_lr: float = 3e-4
    #: A real face's marked pupils count this many times a render's landmark: 2 points on 3% of
    #: the samples did not move the eyes (real eyes sat 0.06 IPD below the marks, Hopper's too).
    photo_landmark_weight: float = 10.0


def _batch(
    data: FaceData, idx: np.ndarray, rng: np.random.Generator, augment: bool
) -> dict[str, torch.Tensor]:
    crops, lms, boxes = zip(*(training_crop(data, int(i), rng, augment=augment) for i in idx), strict=True)
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    return {
        "x": x,
        "lm": torch.from_numpy(np.stack(lms)),
        "box": torch.from_numpy(np.stack(boxes)) / INPUT_PX,
        "worn": torch.from_numpy(data.worn[idx].astype(np.float32)),
        "photo": torch.from_numpy(data.face_index[idx] == PHOTO_FACE_INDEX),
    }


def loss_of(
    net: FaceNet, out: dict[str, torch.Tensor], b: dict[str, torch.Tensor], cfg: FitConfig
) -> torch.Tensor:
    lm = b["lm"] / STRIDE  # (B, L, 2) in cells; NaN where a sample has no truth (photo samples)
    known = torch.isfinite(lm).all(dim=2)
    lm = torch.nan_to_num(lm, nan=0.0)
    inside = known & ((lm >= 0) & (lm < GRID)).all(dim=2)  # landmarks off the crop teach nothing
    cell = lm.clamp(0, GRID - 1e-3).floor().long()
    flat = cell[..., 1] * GRID + cell[..., 0]
    ce = F.cross_entropy(out["heat"].transpose(1, 2), flat, reduction="none")  # (B, L)
    bsz, n = flat.shape
    bi = torch.arange(bsz)[:, None].expand(bsz, n)
    li = torch.arange(n)[None, :].expand(bsz, n)
    off = out["offset"][bi, li, :, cell[..., 1], cell[..., 0]]
    off_l = F.l1_loss(off, lm - cell.float(), reduction="none").sum(-1)
    nb = out["neighbour"][bi, li, :, :, cell[..., 1], cell[..., 0]]  # (B, L, K, 2)
    target_nb = lm[:, net.neighbours] - cell.float()[:, :, None, :]  # (B, L, K, 2)
    nb_known = known[:, net.neighbours].float()  # (B, L, K)
    nb_l = (F.l1_loss(nb, target_nb, reduction="none").sum(-1) * nb_known).sum(-1) / nb_known.sum(-1).clamp(
        min=1
    )
    mask = inside.float()
    denom = mask.sum().clamp(min=1)
    weight = mask * torch.where(b["photo"], cfg.photo_landmark_weight, 1.0)[:, None]
    landmarks = ((ce + cfg.w_offset * off_l + cfg.w_neighbour * nb_l) * weight).sum() / denom
    presence = F.binary_cross_entropy_with_logits(out["presence"], b["worn"])
    box = (F.l1_loss(out["box"], b["box"], reduction="none").sum(-1) * b["worn"]).sum() / b[
        "worn"
    ].sum().clamp(min=1)
    return landmarks + cfg.w_presence * presence + cfg.w_box * box


def mean_shape(data: FaceData, rng: np.random.Generator) -> np.ndarray:
    shapes = [training_crop(data, int(i), rng, augment=False)[1] for i in range(min(len(data.worn), 400))]
    return np.mean(shapes, axis=0)


def _fit(
    net: FaceNet, data: FaceData, ckpt: Path, cfg: FitConfig, *, epochs: int, lr: float, seed_tag: int
) -> float:
    """Train `net` on `data` for `epochs` with a one-cycle schedule peaking at `lr`, writing a
    checkpoint per epoch to `ckpt`; a rerun resumes exactly where it stopped. Returns the training
    seconds of every run that made it (kept in the checkpoint, so a resumed run reports the whole
    cost)."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    steps = epochs * (len(data.worn) // cfg.batch_size)
    # A warm-up of at least two steps: OneCycleLR divides by zero on a one-step warm-up (tiny runs).
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 2.5 / steps)
    )
    start, spent = 0, 0.0
    if ckpt.exists():
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
        net.load_state_dict(blob["net"])
        opt.load_state_dict(blob["opt"])
        sched.load_state_dict(blob["sched"])
        start, spent = int(blob["epoch"]), float(blob.get("seconds", 0.0))
        log.info("face fit: %s resumes after epoch %d", ckpt.name, start)
    for epoch in range(start, epochs):
        net.train()
        rng = np.random.default_rng([cfg.seed, seed_tag, epoch] if seed_tag else [cfg.seed, epoch])
        order = rng.permutation(len(data.worn))
        t0, total, nb = time.perf_counter(), 0.0, 0
        for s in range(len(order) // cfg.batch_size):
            b = _batch(data, order[s * cfg.batch_size : (s + 1) * cfg.batch_size], rng, True)
            loss = loss_of(net, net(b["x"]), b, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, nb = total + float(loss.detach()), nb + 1
        seconds = time.perf_counter() - t0
        spent += seconds
        torch.save(
            {
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "epoch": epoch + 1,
                "seconds": spent,
            },
            ckpt.with_suffix(".tmp"),
        )
        ckpt.with_suffix(".tmp").replace(ckpt)
        print(
            f"face fit ({ckpt.stem}) epoch {epoch + 1}/{epochs}: "
            f"loss {total / max(nb, 1):.3f} in {seconds:.0f} s",
            flush=True,
        )
    return spent


def train(data: FaceData, work: Path, cfg: FitConfig) -> tuple[FaceNet, float]:
    """Stage 1: fine-tune from ImageNet on the procedural renders (held-out identities excluded)."""
    torch.manual_seed(cfg.seed)
    train_data = data.subset(~data.held_out)
    neighbours = neighbour_table(mean_shape(train_data, np.random.default_rng(cfg.seed)))
    net = FaceNet(neighbours)
    state, where = load_mobilenet_v2_state()
    load_features(net.features, state, len(net.features), where)
    spent = _fit(net, train_data, work / "face-fit.ckpt", cfg, epochs=cfg.epochs, lr=cfg.lr, seed_tag=0)
    return net.eval(), spent


def adapt_to_photos(net: FaceNet, data: FaceData, photos: FaceData, work: Path, cfg: FitConfig) -> float:
    """Stage 2: a few epochs on the procedural training renders plus the real-face samples
    (face/training/photo_data.py) at a lower rate, so real skin and real eyelids move the presence
    and the eyes without losing what the renders taught."""
    torch.manual_seed(cfg.seed + 1)
    mixed = concat(data.subset(~data.held_out), photos)
    spent = _fit(
        net, mixed, work / "face-photo-fit.ckpt", cfg, epochs=cfg.photo_epochs, lr=cfg.photo_lr, seed_tag=2
    )
    return spent


def predict(analyser: FaceAnalyser, data: FaceData) -> dict[str, np.ndarray]:
    """Landmarks (image pixels of the render) and presence for every sample, through the query
    path's own `FaceAnalyser.analyse` on dlib's box (or the proxy where dlib found none)."""
    found = []
    for i in range(len(data.worn)):
        box = data.det_box[i] if data.det_box[i, 0] >= 0 else proxy_box(data.landmarks[i])
        found.append(analyser.analyse(data.rgb[i], box))
    return {
        "landmarks": np.stack([a.landmarks_xy for a in found]),
        "p": np.asarray([a.glasses_probability for a in found]),
        "face": np.asarray([a.looks_like_a_face for a in found]),
    }


def eye_errors(pred_eyes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per sample: mean over both eyes of |error| / inter-pupil distance."""
    ipd = np.linalg.norm(truth[:, 0] - truth[:, 1], axis=1)
    return np.linalg.norm(pred_eyes - truth[:, 0:2], axis=2).mean(axis=1) / ipd


def dlib_eyes(data: FaceData) -> np.ndarray:
    """dlib 5-point eye centres (means of each eye's corners) on dlib's own box; NaN where none."""
    _, predictor = _dlib()
    out = np.full((len(data.worn), 2, 2), np.nan)
    for i in range(len(data.worn)):
        if data.det_box[i, 0] < 0:
            continue
        x0, y0, x1, y1 = (int(v) for v in data.det_box[i])
        shape = predictor(np.ascontiguousarray(data.rgb[i]), dlib.rectangle(x0, y0, x1, y1))
        pts = np.array([[shape.part(k).x, shape.part(k).y] for k in range(5)], float)
        out[i] = [pts[0:2].mean(axis=0), pts[2:4].mean(axis=0)]
    return out


def _summary(err: np.ndarray) -> dict[str, float | int]:
    err = err[np.isfinite(err)]
    if not len(err):
        return {"n": 0}
    return {
        "n": len(err),
        "median": round(float(np.median(err)), 4),
        "p90": round(float(np.quantile(err, 0.9)), 4),
    }


def calibrate(p_worn: np.ndarray, p_bare: np.ndarray, target: float = TARGET_FALSE_REFUSAL) -> float:
    """Midway, in log-odds, between the probability that refuses `target` of the worn faces and the
    one that accepts `target` of the bare ones.

    Renders separate the two by a wide margin (worn ~0.997, bare ~0.002) and real photos land
    inside it: every real face scores higher than a rendered bare one. The edge of the margin (the
    worn side's 2% quantile alone) refused half of Grace Hopper's photos, glasses and all; its
    middle keeps both errors low under that shift.
    """
    eps = 1e-6
    worn = np.clip(np.quantile(p_worn, target), eps, 1 - eps)
    bare = np.clip(np.quantile(p_bare, 1 - target), eps, 1 - eps)
    mid = (np.log(worn / (1 - worn)) + np.log(bare / (1 - bare))) / 2
    return float(1 / (1 + np.exp(-mid)))


def calibrate_on_portraits(views: PortraitViews, target: float = TARGET_FALSE_REFUSAL) -> float:
    """The presence threshold from the calibration portraits' views where a face is found:
    `calibrate` on real glasses and real bare eyes. Renders keep their wide margin on either side
    of it (the card's `presence` figures say so); real faces are where the errors are."""
    ok = views.found & views.shape_ok
    return calibrate(views.p_glasses[ok & views.worn], views.p_glasses[ok & ~views.worn], target)


#: Damaged uploads per portrait when calibrating and measuring (besides it as it is and colourised).
PORTRAIT_DAMAGED_VIEWS = 2


def calibration_half(held: FaceData) -> np.ndarray:
    """The held-out identities that choose settings (threshold, merge); the others give figures."""
    return (held.face_index // VAL_EVERY) % 2 == 0


def choose_merge(net: FaceNet, calib: FaceData) -> list[bool]:
    """Per landmark: does averaging in the neighbours' votes lower its median error on the
    calibration identities? (See face.net.decode.)"""
    every = [True] * len(FACE_LANDMARKS)
    merged = predict(FaceAnalyser(net, 0.5, every), calib)["landmarks"]
    own = predict(FaceAnalyser(net, 0.5, [False] * len(FACE_LANDMARKS)), calib)["landmarks"]
    err = lambda pred: np.median(np.linalg.norm(pred - calib.landmarks, axis=2), axis=0)  # noqa: E731
    return [bool(m < o) for m, o in zip(err(merged), err(own), strict=True)]


def evaluate(analyser: FaceAnalyser, held: FaceData) -> dict[str, Any]:
    """Calibrate on one half of the held-out identities and report on the other."""
    pred = predict(analyser, held)
    calib = calibration_half(held)
    threshold = calibrate(pred["p"][calib & held.worn], pred["p"][calib & ~held.worn])
    test = ~calib
    truth = held.landmarks
    net_err = eye_errors(pred["landmarks"][:, 0:2], truth)
    dl = dlib_eyes(held)
    dlib_err = eye_errors(dl, truth)
    dark = np.isin(held.lens, [LENS_CODES.index("tinted"), LENS_CODES.index("mirrored")]) & held.worn
    detected = held.det_box[:, 0] >= 0
    interocular = np.linalg.norm(truth[:, 3] - truth[:, 5], axis=1)  # outer eye corners
    nme = np.linalg.norm(pred["landmarks"] - truth, axis=2).mean(axis=1) / interocular
    p = pred["p"]
    return {
        "threshold": round(threshold, 4),
        "identities": {
            "calibration": len(np.unique(held.face_index[calib])),
            "test": len(np.unique(held.face_index[test])),
        },
        "eye_error_ipd": {
            "network_all": _summary(net_err[test]),
            "network_sunglasses": _summary(net_err[test & dark]),
            "network_where_dlib_found": _summary(net_err[test & detected]),
            "dlib5_where_found": _summary(dlib_err[test & detected]),
            "network_sunglasses_where_dlib_found": _summary(net_err[test & dark & detected]),
            "dlib5_sunglasses_where_found": _summary(dlib_err[test & dark & detected]),
        },
        "nme_interocular": {
            "network_all": _summary(nme[test]),
            "network_worn": _summary(nme[test & held.worn]),
        },
        "presence": {
            "false_refusal": round(float((p[test & held.worn] < threshold).mean()), 4),
            "false_accept": round(float((p[test & ~held.worn] >= threshold).mean()), 4),
            "worn": int((test & held.worn).sum()),
            "bare": int((test & ~held.worn).sum()),
            # Refused as not holding a face's shape (face.net.MAX_SHAPE_DISAGREEMENT), worn faces.
            "shape_refusal_worn": round(float((~pred["face"][test & held.worn]).mean()), 4),
        },
        "dlib_detected_share": round(float(detected[test].mean()), 3),
    }


def render_presence(analyser: FaceAnalyser, held: FaceData, threshold: float) -> dict[str, float]:
    """Presence errors on the held-out renders' test half at `threshold` (a threshold set on real
    faces must still accept every render with glasses, sunglasses included)."""
    test = ~calibration_half(held)
    p = predict(analyser, held)["p"]
    dark = np.isin(held.lens, [LENS_CODES.index("tinted"), LENS_CODES.index("mirrored")]) & held.worn
    return {
        "false_refusal": round(float((p[test & held.worn] < threshold).mean()), 4),
        "false_refusal_sunglasses": round(float((p[test & dark] < threshold).mean()), 4),
        "false_accept": round(float((p[test & ~held.worn] >= threshold).mean()), 4),
    }


@dataclass(frozen=True)
class TrunkInit:
    """Stages 1-2 already done: the network they gave and what its card said about them."""

    net: FaceNet
    model_sha: str
    stage_seconds: dict[str, float]
    #: Its card's "faces" and "photo_samples": what stages 1-2 saw.
    data: dict[str, Any]


def train_and_package(
    work: Path,
    shards: int,
    photos: FaceData | None,
    assets: list[tuple[str, bytes]],
    cfg: FitConfig | None = None,
    out_dir: Path | None = None,
    presence_cfg: PresenceConfig | None = None,
    init: TrunkInit | None = None,
    portraits: dict[str, list[Portrait]] | None = None,
) -> dict[str, Any]:
    """Train (resuming) and adapt to the real-face samples when given, or start from `init`;
    fit the presence decision on the eye band (stage 3), evaluate, and write face-analysis.pt
    and its card into the package."""
    cfg = cfg or FitConfig()
    presence_cfg = presence_cfg or PresenceConfig()
    torch.set_num_threads(2)
    data = load_shards(work / "shards", range(shards))
    net, stage_seconds = _trunk(data, photos, work, cfg, init)
    net.eval()
    train_portraits = (portraits or {}).get("train", [])
    presence_report = fit_band_presence(net, data, assets, work, presence_cfg, train_portraits)
    stage_seconds["presence"] = presence_report["seconds"]
    held = data.subset(data.held_out)
    merge = choose_merge(net, held.subset(calibration_half(held)))
    report = evaluate(FaceAnalyser(net, 0.5, merge), held)
    report["merge_votes"] = dict(zip(FACE_LANDMARKS, merge, strict=True))
    if portraits:
        _threshold_on_portraits(report, FaceAnalyser(net, 0.5, merge), held, portraits, presence_cfg.seed)
    presence_report["hopper_uploads"] = upload_check(net, report["threshold"], 60, presence_cfg.seed)
    report["presence_stage"] = presence_report
    meta = {
        "neighbours": net.neighbours.numpy().tolist(),
        "landmarks": list(FACE_LANDMARKS),
        "input_px": INPUT_PX,
        "threshold": report["threshold"],
        "merge_votes": merge,
    }
    weights = save_weights(net, meta)
    out_dir = out_dir or MODELS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "face-analysis"
    weights_path(name, out_dir).write_bytes(weights)
    card = {
        "kind": name,
        "model_sha": model_sha(weights),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "meta": meta,
        "config": asdict(cfg),
        "presence_config": asdict(presence_cfg),
        # Stages 1-2 were run for another model (train --init packaged): this one's trunk is its.
        **({} if init is None else {"trunk_model_sha": init.model_sha}),
        "data": _data_record(data, photos, init, portraits),
        "evaluation": report,
        "train_seconds": round(sum(stage_seconds.values()), 1),
        "train_seconds_by_stage": stage_seconds,
        "imagenet": SOURCE,
        "retrain": "python -m glassfinder.face.training.train --work DIR",
    }
    card_path(name, out_dir).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return report


def _trunk(
    data: FaceData, photos: FaceData | None, work: Path, cfg: FitConfig, init: TrunkInit | None
) -> tuple[FaceNet, dict[str, float]]:
    """The network after stages 1-2 and their seconds: trained here (resuming), or `init`'s."""
    if init is not None:
        return init.net, dict(init.stage_seconds)
    net, seconds = train(data, work, cfg)
    stage_seconds = {"renders": round(seconds, 1)}
    if photos is not None:
        stage_seconds["photos"] = round(adapt_to_photos(net.train(), data, photos, work, cfg), 1)
    return net, stage_seconds


def _threshold_on_portraits(
    report: dict[str, Any],
    analyser: FaceAnalyser,
    held: FaceData,
    portraits: dict[str, list[Portrait]],
    seed: int,
) -> None:
    """Move the report's threshold to the one set on real portraits (the renders' stays beside it):
    real faces are where the presence errors are, renders keep a wide margin either side."""
    report["threshold_renders"] = report["threshold"]
    calib = portrait_views(analyser, portraits["calibrate"], PORTRAIT_DAMAGED_VIEWS, seed)
    report["threshold"] = round(calibrate_on_portraits(calib), 4)
    report["presence_renders_at_threshold"] = render_presence(analyser, held, report["threshold"])
    report["portraits"] = {
        "split": split_record(portraits),
        "calibrate": portrait_figures(calib, report["threshold"], 0.0),
    }


#: What the card says about the real portraits, when the network saw them.
PORTRAITS_NOTE = (
    "official portraits of members of the US Congress (Congressional Pictorial "
    "Directory, US Government Publishing Office, via unitedstates/images and "
    "Reform-to/congress-photos; public domain), grey 200 x 250, labelled by eye; the train "
    "split fits presence and the verifier, the calibrate split sets the presence threshold, "
    "the test split gives the figures (evaluation.portraits)"
)


def _data_record(
    data: FaceData,
    photos: FaceData | None,
    init: TrunkInit | None,
    portraits: dict[str, list[Portrait]] | None,
) -> dict[str, Any]:
    """The card's account of what the network was trained and measured on."""
    return {
        "samples": len(data.worn),
        "trained_on": int((~data.held_out).sum()),
        "held_out": int(data.held_out.sum()),
        "render_spec": json.loads(FACE_SPEC.canonical_json()),
        "faces": "procedural heads only (no photo; the astronaut is never seen)"
        if photos is None
        else "procedural heads, then Grace Hopper's photo (bare by inpainting, and wearing rendered"
        " catalogue frames); the astronaut is never seen",
        "photo_samples": {
            "worn": int(photos.worn.sum()) if photos is not None else 0,
            "bare": int((~photos.worn).sum()) if photos is not None else 0,
        },
        **({} if init is None else init.data),
        **({} if not portraits else {"portraits": PORTRAITS_NOTE}),
    }
