"""Face-analysis benchmark: eye centres and glasses presence on photos of the unseen face.

The astronaut (scikit-image) is the face no packaged model trained or calibrated on. The product's
renderer puts catalogue frames on her photo (search/samples.py), each photo is then damaged like
a phone photo (bench/photo_bench.py: reframing crop, rescale, colour cast, blur, noise, JPEG) with
the geometric part tracked, so her hand-annotated pupils (UNSEEN_FACE_PUPILS, measured once on the
original 512 px photo to about +-0.7 px, ~0.016 of her pupil distance) are known on every photo.
Her bare photo and crops/rescales of it must be refused, and so must non-face photos (the face
verifier's, held-out sources reported apart from the ones it was fitted on). Grace Hopper (matplotlib) wearing
catalogue frames is reported beside it for refusals and eye error (her hand-marked pupils,
TRAINING_PHOTO_PUPILS); she is a SEEN face (the packaged model's
second training stage uses her photo, see face/training/photo_data.py). Figures: eye-centre error /
inter-pupil distance for the network and for dlib's 5-point model on the same photos (its eye =
mean of the eye's two corners), the network's median signed eye offset (a bias, unlike scatter, is
a convention or domain gap), refusals by reason, and the time of detection + analysis per photo.

    .venv/bin/python bench/face_bench.py --photos 60 --bare 20 [--models-dir DIR]

The held-out render figures (eye error with sunglasses, presence rates, NME) are measured when the
model is trained and written to its card: glassfinder/models/face-analysis.card.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: The astronaut's pupils on the original photo: the subject's left eye (image right) first.
UNSEEN_FACE_PUPILS = np.array([[246.5, 102.5], [203.0, 100.5]])
CATALOG_SEED = 11


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def eye_error(eyes: np.ndarray | None, truth: np.ndarray) -> float | None:
    """Mean distance of the two eyes from the truth, over the true inter-pupil distance."""
    if eyes is None:
        return None
    return float(np.linalg.norm(eyes - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[1]))


def make_photos(work: Path, n_worn: int, n_bare: int, products: int) -> list[dict[str, Any]]:
    from photo_bench import face_photos

    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY
    from glassfinder.catalog.manifest import read_manifest_rows
    from glassfinder.embed.augment import phone_damage_mapped
    from glassfinder.embed.default_model import prepare_catalog
    from glassfinder.heads.photos import analyse_photo, crop_mapping
    from glassfinder.heads.training_photo import TRAINING_PHOTO_PUPILS
    from glassfinder.search.samples import photo_wearing

    store = prepare_catalog(work, products, seed=CATALOG_SEED)
    rows = read_manifest_rows(store, CATALOG_MANIFEST_KEY)
    faces = face_photos()
    pupils = {"astronaut": UNSEEN_FACE_PUPILS, "hopper": TRAINING_PHOTO_PUPILS.astype(np.float64)}
    to_crop = {f: crop_mapping(analyse_photo(faces[f], f"{f}.png")[0].crop_box) for f in pupils}
    out = work / "face-photos"
    out.mkdir(parents=True, exist_ok=True)
    photos: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for face in ("astronaut", "hopper"):
        for i in range(n_worn):
            path = out / f"{face}-worn-{i:03d}.jpg"
            meta = path.with_suffix(".json")
            if not path.exists() or json.loads(meta.read_text())["eyes"] is None:
                row = rows[i % len(rows)]
                rgb = photo_wearing(store, row, faces[face], f"{face}.png", seed=2000 + i)
                data, m = phone_damage_mapped(rgb, np.random.default_rng([i, 17, len(face)]))
                truth = _apply(m, _apply(to_crop[face], pupils[face]))
                meta.write_text(json.dumps({"eyes": truth.tolist(), "lens": row.get("lens_style")}))
                path.write_bytes(data)
            photos.append({"face": face, "worn": True, "path": path, **json.loads(meta.read_text())})
    from PIL import Image

    astro_rgb = np.asarray(Image.open(__import__("io").BytesIO(faces["astronaut"])).convert("RGB"))
    for i in range(n_bare):
        path = out / f"astronaut-bare-{i:03d}.jpg"
        meta = path.with_suffix(".json")
        if not path.exists():
            data, m = phone_damage_mapped(astro_rgb, np.random.default_rng([i, 23]))
            meta.write_text(json.dumps({"eyes": _apply(m, UNSEEN_FACE_PUPILS).tolist(), "lens": None}))
            path.write_bytes(data)
        photos.append({"face": "astronaut", "worn": False, "path": path, **json.loads(meta.read_text())})
    print(f"photos ready in {time.perf_counter() - t0:.0f} s ({len(photos)})")
    return photos


def run(photos: list[dict[str, Any]], models_dir: Path | None = None) -> dict[str, Any]:
    from glassfinder.errors import PhotoError, QueryRefusedError
    from glassfinder.face.detect import detect_face
    from glassfinder.face.net import packaged_analyser
    from glassfinder.search.query import (
        DETECT_MAX_SIDE_PX,
        QUERY_DETECTION_THRESHOLD,
        check_analysis,
        decode_photo,
        find_face,
    )

    sha, analyser = packaged_analyser(models_dir)
    rows = []
    for p in photos:
        rgb = decode_photo(p["path"].read_bytes(), p["path"].name)
        rec: dict[str, Any] = {"face": p["face"], "worn": p["worn"], "lens": p["lens"]}
        t0 = time.perf_counter()
        eyes: np.ndarray | None = None  # stays unset when no face is found
        try:
            face = find_face(rgb, p["path"].name)
            a = analyser.analyse(rgb, face.box_xyxy)
            rec["ms"] = (time.perf_counter() - t0) * 1000
            rec["p"], rec["shape_disagreement"] = a.glasses_probability, a.shape_disagreement
            eyes = a.eyes_xy
            check_analysis(a, analyser.threshold, p["path"].name, face.box_xyxy)
            rec["refused"] = None
        except QueryRefusedError as exc:  # before analysis (eyes unset) or after it
            rec["refused"] = exc.reason
        try:
            old = detect_face(
                rgb, p["path"].name, max_side_px=DETECT_MAX_SIDE_PX, threshold=QUERY_DETECTION_THRESHOLD
            )
            old_eyes: np.ndarray | None = old.eyes_xy()
        except PhotoError:
            old_eyes = None
        if p["eyes"] is not None:
            truth = np.asarray(p["eyes"])
            rec["err"], rec["err_dlib5"] = eye_error(eyes, truth), eye_error(old_eyes, truth)
            if eyes is not None:  # the signed error (x right, y down), to tell a bias from scatter
                rec["offset"] = ((eyes - truth).mean(axis=0) / np.linalg.norm(truth[0] - truth[1])).tolist()
        rows.append(rec)
    return {"model": sha, "threshold": analyser.threshold, "rows": rows}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]

    def stats(vals: list[float | None]) -> dict[str, Any]:
        v = np.array([x for x in vals if x is not None])
        return {"n": len(v), "median": round(float(np.median(v)), 4) if len(v) else None,
                "p90": round(float(np.quantile(v, 0.9)), 4) if len(v) else None}  # fmt: skip

    out: dict[str, Any] = {"model": result["model"], "threshold": round(result["threshold"], 4)}
    for face, worn in (("astronaut", True), ("hopper", True), ("astronaut", False)):
        sel = [r for r in rows if r["face"] == face and r["worn"] == worn]
        if not sel:
            continue
        key = f"{face}_{'worn' if worn else 'bare'}"
        refusals = Counter(r["refused"] for r in sel if r["refused"])
        entry: dict[str, Any] = {
            "photos": len(sel),
            "refusals": dict(refusals),
            "refused_share": round(sum(refusals.values()) / len(sel), 3),
        }
        ps = [r["p"] for r in sel if "p" in r]
        if ps:  # glasses probabilities where a face was analysed, against the model's threshold
            entry["glasses_p"] = {
                "min": round(min(ps), 4),
                "median": round(float(np.median(ps)), 4),
                "max": round(max(ps), 4),
            }
        if any(r.get("err") is not None for r in sel):
            offsets = np.array([r["offset"] for r in sel if "offset" in r])
            if len(offsets):
                entry["eye_offset_network_median_xy"] = np.median(offsets, axis=0).round(4).tolist()
            both = [r for r in sel if r.get("err") is not None and r.get("err_dlib5") is not None]
            entry["eye_error_network"] = stats([r.get("err") for r in sel])
            entry["eye_error_dlib5"] = stats([r.get("err_dlib5") for r in sel])
            entry["eye_error_both_found"] = {
                "network": stats([r["err"] for r in both]),
                "dlib5": stats([r["err_dlib5"] for r in both]),
            }
        ms = [r["ms"] for r in sel if "ms" in r]
        if ms:
            entry["detect_analyse_ms"] = {
                "p50": round(float(np.median(ms)), 1),
                "p99": round(float(np.quantile(ms, 0.99)), 1),
            }
        out[key] = entry
    return out


def non_face_refusals(views_per_photo: int, models_dir: Path | None = None) -> dict[str, Any]:
    """Non-face photos (the face verifier's, held-out sources apart from fitted ones), whole and
    cropped/rescaled, through the query path's detection, weak fallback and checks: how many would
    be searched as a face wearing glasses."""
    from glassfinder.errors import QueryRefusedError
    from glassfinder.face.net import packaged_analyser
    from glassfinder.face.training.verify import held_out_source, non_face_photos, photo_variant
    from glassfinder.search.query import check_analysis, find_face

    _, analyser = packaged_analyser(models_dir)
    rng = np.random.default_rng(2024)
    out: dict[str, Any] = {}
    for k, (name, image) in enumerate(non_face_photos()):
        group = out.setdefault("held_out" if held_out_source(k) else "fitted", {"photos": 0, "searched": []})
        for v in range(views_per_photo):
            view = image if v == 0 else np.ascontiguousarray(photo_variant(image, rng))
            group["photos"] += 1
            try:
                face = find_face(view, name)
                a = analyser.analyse(view, face.box_xyxy)
                check_analysis(a, analyser.threshold, name, face.box_xyxy)
                group["searched"].append(f"{name} #{v}")
            except QueryRefusedError:
                pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--work", default=".glassfinder/face-bench")
    parser.add_argument("--products", type=int, default=24)
    parser.add_argument("--photos", type=int, default=60, help="worn photos per face")
    parser.add_argument("--bare", type=int, default=20, help="bare astronaut photos (crops, rescales)")
    parser.add_argument(
        "--non-face-views", type=int, default=10, help="views (whole, then crops) of each non-face photo"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="a face-analysis model to measure (default: the packaged one)",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    work = Path(args.work)
    photos = make_photos(work, args.photos, args.bare, args.products)
    summary = summarise(run(photos, args.models_dir))
    summary["non_face_photos"] = non_face_refusals(args.non_face_views, args.models_dir)
    print(json.dumps(summary, indent=2))
    (work / "report.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
