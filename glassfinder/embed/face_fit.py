"""Train, calibrate, measure and package the face-analysis network (see embed/face_train.py).

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

from glassfinder.embed.face_data import (
    INPUT_PX,
    LENS_CODES,
    VAL_EVERY,
    FaceData,
    load_shards,
    proxy_box,
    training_crop,
)
from glassfinder.embed.face_net import STRIDE, FaceAnalyzer, FaceNet, neighbour_table, save_weights
from glassfinder.embed.imagenet import SOURCE, load_mobilenet_v2_state
from glassfinder.embed.mobilenet import load_features
from glassfinder.embed.model import model_sha
from glassfinder.embed.packaged import MODELS_DIR, card_path, weights_path
from glassfinder.faces.photos import _dlib
from glassfinder.render.face_views import FACE_LANDMARKS, FACE_SPEC

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
    }


def loss_of(
    net: FaceNet, out: dict[str, torch.Tensor], b: dict[str, torch.Tensor], cfg: FitConfig
) -> torch.Tensor:
    lm = b["lm"] / STRIDE  # (B, L, 2) in cells
    inside = ((lm >= 0) & (lm < GRID)).all(dim=2)  # landmarks off the crop teach nothing
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
    nb_l = F.l1_loss(nb, target_nb, reduction="none").sum(-1).mean(-1)
    mask = inside.float()
    denom = mask.sum().clamp(min=1)
    landmarks = ((ce + cfg.w_offset * off_l + cfg.w_neighbour * nb_l) * mask).sum() / denom
    presence = F.binary_cross_entropy_with_logits(out["presence"], b["worn"])
    box = (F.l1_loss(out["box"], b["box"], reduction="none").sum(-1) * b["worn"]).sum() / b[
        "worn"
    ].sum().clamp(min=1)
    return landmarks + cfg.w_presence * presence + cfg.w_box * box


def mean_shape(data: FaceData, rng: np.random.Generator) -> np.ndarray:
    shapes = [training_crop(data, int(i), rng, augment=False)[1] for i in range(min(len(data.worn), 400))]
    return np.mean(shapes, axis=0)


def train(data: FaceData, work: Path, cfg: FitConfig) -> tuple[FaceNet, float]:
    """Fine-tune from ImageNet with a checkpoint per epoch; a rerun resumes where it stopped.

    Returns the network and the training seconds of every run that made it (kept in the
    checkpoint, so a resumed run reports the whole cost)."""
    torch.manual_seed(cfg.seed)
    train_data = data.subset(~data.held_out)
    neighbours = neighbour_table(mean_shape(train_data, np.random.default_rng(cfg.seed)))
    net = FaceNet(neighbours)
    state, where = load_mobilenet_v2_state()
    load_features(net.features, state, len(net.features), where)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * (len(train_data.worn) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    ckpt = work / "face-fit.ckpt"
    start, spent = 0, 0.0
    if ckpt.exists():
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
        net.load_state_dict(blob["net"])
        opt.load_state_dict(blob["opt"])
        sched.load_state_dict(blob["sched"])
        start, spent = int(blob["epoch"]), float(blob.get("seconds", 0.0))
        log.info("face fit: resuming after epoch %d", start)
    for epoch in range(start, cfg.epochs):
        net.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(train_data.worn))
        t0, total, nb = time.perf_counter(), 0.0, 0
        for s in range(len(order) // cfg.batch_size):
            b = _batch(train_data, order[s * cfg.batch_size : (s + 1) * cfg.batch_size], rng, True)
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
            f"face fit epoch {epoch + 1}/{cfg.epochs}: loss {total / max(nb, 1):.3f} in {seconds:.0f} s",
            flush=True,
        )
    return net.eval(), spent


def predict(analyzer: FaceAnalyzer, data: FaceData) -> dict[str, np.ndarray]:
    """Landmarks (image pixels of the render) and presence for every sample, through the query
    path's own `FaceAnalyzer.analyse` on dlib's box (or the proxy where dlib found none)."""
    found = []
    for i in range(len(data.worn)):
        box = data.det_box[i] if data.det_box[i, 0] >= 0 else proxy_box(data.landmarks[i])
        found.append(analyzer.analyse(data.rgb[i], box))
    return {
        "landmarks": np.stack([a.landmarks_xy for a in found]),
        "p": np.asarray([a.glasses_probability for a in found]),
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


def evaluate(analyzer: FaceAnalyzer, held: FaceData) -> dict[str, Any]:
    """Calibrate on one half of the held-out identities and report on the other."""
    pred = predict(analyzer, held)
    calib = (held.face_index // VAL_EVERY) % 2 == 0
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
        },
        "dlib_detected_share": round(float(detected[test].mean()), 3),
    }


def train_and_package(
    work: Path, shards: int, cfg: FitConfig | None = None, out_dir: Path | None = None
) -> dict[str, Any]:
    """Train (resuming), evaluate, and write face-analysis.pt and its card into the package."""
    cfg = cfg or FitConfig()
    torch.set_num_threads(2)
    data = load_shards(work / "shards", range(shards))
    net, seconds = train(data, work, cfg)
    held = data.subset(data.held_out)
    report = evaluate(FaceAnalyzer(net, 0.5), held)
    meta = {
        "neighbours": net.neighbours.numpy().tolist(),
        "landmarks": list(FACE_LANDMARKS),
        "input_px": INPUT_PX,
        "threshold": report["threshold"],
    }
    weights = save_weights(net, meta)
    out_dir = out_dir or MODELS_DIR
    name = "face-analysis"
    weights_path(name, out_dir).write_bytes(weights)
    card = {
        "kind": name,
        "model_sha": model_sha(weights),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "meta": meta,
        "config": asdict(cfg),
        "data": {
            "samples": len(data.worn),
            "trained_on": int((~data.held_out).sum()),
            "held_out": int(data.held_out.sum()),
            "render_spec": json.loads(FACE_SPEC.canonical_json()),
            "faces": "procedural heads only (no photo; the astronaut is never seen)",
        },
        "evaluation": report,
        "train_seconds": round(seconds, 1),
        "imagenet": SOURCE,
        "retrain": "python -m glassfinder.embed.face_train --work DIR",
    }
    card_path(name, out_dir).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return report
