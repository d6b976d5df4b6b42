"""Face analysis on real faces: the portraits' test split and the astronaut, before and after.

Through the query path's own steps (decode, detector, face network, verifier, shape check,
presence threshold: search.query), for each face-analysis model given (`--models-dir`, repeatable;
the packaged one when none is given):

- the portraits' test split (heads/portraits.py: split by person, seeded; no portrait of it
  trained or calibrated anything), each as it is (grey), colourised, and as `--damaged` phone-damaged
  uploads: the `no_face` rate, the false refusals of real glasses (FRR: refused for any reason)
  and the false accepts of bare faces (FAR: searched), and how often the grey and colour versions
  of one portrait get different decisions;
- the astronaut (the unseen face: nothing trains or calibrates on her), wearing rendered frames and
  bare, as bench/face_bench.py makes her photos: refusals and the eye-centre error;
- the eye-centre error on held-out renders, from the model's card.

    .venv/bin/python bench/real_faces_bench.py --models-dir OLD --models-dir glassfinder/models

Figures on these portraits (studio light, frontal, grey, mostly older faces) are not figures on
shoppers' photos.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("as_is", "colourised", "damaged")


def portrait_views(portraits: list[Any], damaged: int, seed: int) -> list[dict[str, Any]]:
    """Every view of each portrait as JPEG bytes (what an upload is), with its label."""
    import cv2

    from glassfinder.embed.augment import phone_damage_mapped
    from glassfinder.heads.portraits import colour_swap, colourise, jpeg_bytes, read_rgb

    rng = np.random.default_rng([seed, 9])
    views = []
    for p in portraits:
        rgb = read_rgb(p.path)
        views.append({"id": p.id, "worn": p.worn, "variant": "as_is", "data": p.path.read_bytes()})
        views.append(
            {"id": p.id, "worn": p.worn, "variant": "colourised", "data": jpeg_bytes(colourise(rgb, rng))}
        )
        for _ in range(damaged):
            data, _m = phone_damage_mapped(colour_swap(rgb, rng, 0.5), rng)
            assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
            views.append({"id": p.id, "worn": p.worn, "variant": "damaged", "data": data})
    return views


def decide(views: list[dict[str, Any]], models_dir: Path | None) -> list[dict[str, Any]]:
    from glassfinder.errors import QueryRefusedError
    from glassfinder.face.net import packaged_analyser
    from glassfinder.search.query import check_analysis, decode_photo, find_face

    packaged_analyser.cache_clear()
    _, analyser = packaged_analyser(models_dir)
    out = []
    for v in views:
        name = f"{v['id']}-{v['variant']}.jpg"
        rec = {k: v[k] for k in ("id", "worn", "variant")}
        try:
            rgb = decode_photo(v["data"], name)
            face = find_face(rgb, name)
            a = analyser.analyse(rgb, face.box_xyxy)
            rec["p"] = round(a.glasses_probability, 4)
            check_analysis(a, analyser.threshold, name, face.box_xyxy)
            rec["outcome"] = "searched"
        except QueryRefusedError as exc:
            rec["outcome"] = exc.reason
        out.append(rec)
    return out


def portrait_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in ("all", *VARIANTS):
        sel = [r for r in rows if variant == "all" or r["variant"] == variant]
        worn = [r for r in sel if r["worn"]]
        bare = [r for r in sel if not r["worn"]]
        out[variant] = {
            "views": len(sel),
            "no_face": round(sum(r["outcome"] == "no_face" for r in sel) / len(sel), 4),
            "frr": round(sum(r["outcome"] != "searched" for r in worn) / max(1, len(worn)), 4),
            "frr_reasons": dict(Counter(r["outcome"] for r in worn if r["outcome"] != "searched")),
            "far": round(sum(r["outcome"] == "searched" for r in bare) / max(1, len(bare)), 4),
            "worn_views": len(worn),
            "bare_views": len(bare),
        }
    as_is = {r["id"]: r["outcome"] == "searched" for r in rows if r["variant"] == "as_is"}
    colour = {r["id"]: r["outcome"] == "searched" for r in rows if r["variant"] == "colourised"}
    out["grey_colour_disagree"] = sum(as_is[k] != colour[k] for k in as_is)
    return out


def card_eye_figures(models_dir: Path | None) -> dict[str, Any]:
    from glassfinder.nets.packaged import read_packaged

    card = read_packaged("face-analysis", models_dir).card
    ev = card.get("evaluation", {})
    return {
        "model_sha": card.get("model_sha"),
        "renders_eye_error_ipd": ev.get("eye_error_ipd", {}).get("network_all"),
        "renders_eye_error_sunglasses": ev.get("eye_error_ipd", {}).get("network_sunglasses"),
        "threshold": card.get("meta", {}).get("threshold"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models-dir", type=Path, action="append", default=None)
    parser.add_argument("--portraits", type=Path, default=None, help="default: settings.portraits_dir()")
    parser.add_argument("--damaged", type=int, default=2, help="phone-damaged uploads per portrait")
    parser.add_argument("--work", default=".glassfinder/face-bench", help="bench/face_bench.py's photos")
    parser.add_argument("--photos", type=int, default=60, help="astronaut photos wearing frames")
    parser.add_argument("--bare", type=int, default=20, help="bare astronaut photos (crops, rescales)")
    parser.add_argument("--products", type=int, default=24)
    args = parser.parse_args()
    import torch
    from face_bench import make_photos, run, summarise

    from glassfinder.heads.portraits import load_portraits, split_portraits
    from glassfinder.settings import portraits_dir

    torch.set_num_threads(2)
    test = split_portraits(load_portraits(args.portraits or portraits_dir()))["test"]
    views = portrait_views(test, args.damaged, seed=1)
    unseen_face_photos = make_photos(Path(args.work), args.photos, args.bare, args.products)
    unseen_face_photos = [p for p in unseen_face_photos if p["face"] == "astronaut"]
    report: dict[str, Any] = {"portraits_test": {"portraits": len(test), "worn": sum(p.worn for p in test)}}
    for models_dir in args.models_dir or [None]:
        label = str(models_dir or "packaged")
        summary = summarise(run(unseen_face_photos, models_dir))
        report[label] = {
            "card": card_eye_figures(models_dir),
            "portraits": portrait_figures(decide(views, models_dir)),
            "astronaut_worn": summary.get("astronaut_worn"),
            "astronaut_bare": summary.get("astronaut_bare"),
        }
    print(json.dumps(report, indent=2))
    out = Path(args.work) / "real-faces-report.json"
    out.write_text(json.dumps(report, indent=2))
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    print("\nmodel | portraits no_face | FRR | FAR | grey/colour disagree | astronaut worn refused | "
          "astronaut bare refused | astronaut eye error median | renders eye error median")  # fmt: skip
    for label, r in report.items():
        if label == "portraits_test":
            continue
        p, aw, ab = r["portraits"]["all"], r["astronaut_worn"] or {}, r["astronaut_bare"] or {}
        err = (aw.get("eye_error_network") or {}).get("median")
        renders = (r["card"]["renders_eye_error_ipd"] or {}).get("median")
        print(
            f"{r['card']['model_sha']} | {p['no_face']:.3f} | {p['frr']:.3f} | {p['far']:.3f} | "
            f"{r['portraits']['grey_colour_disagree']} | {aw.get('refused_share')} | "
            f"{ab.get('refused_share')} | "
            f"{err} | {renders}"
        )


if __name__ == "__main__":
    main()
