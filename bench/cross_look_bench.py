"""Cross-look benchmark: each model (row: the look it trained on) searched with queries of each look.

A gain measured on the look a model trained on can be a loss on photos no part of the pipeline
made; this table shows both. Columns (test looks), every query through the real query path
(`QueryEngine.search`: decode, detect, face analysis, align, embed, search):

- own/procedural: the product's renderer on procedural heads 900-999 (never in the gallery's
  0-799), one view per product, damaged by the benches' usual phone damage;
- own/astronaut, own/hopper: the product's renderer on the two public-domain photos
  (search/samples.py, as bench/photo_bench.py makes them), the same damage;
- second/astronaut, second/hopper: bench/second_look.py, the independent compositor and its own
  harsher damage, on the same photos wearing the same products.

The astronaut is the unseen face. Grace Hopper is seen by the packaged models (her photo, frames
inpainted, trains the embedding and face analysis), and wears her own glasses under the
composited ones in both looks (her raw photo, as photo_bench uses it).

Per cell: top-1 and top-10 of the true product among the catalogue's (default 300 products;
`--products 3200` works but renders a gallery of 19,200 views, about an hour on 2 cores), refusals,
top-1 misses that are another colourway of the same shape, and the eye-centre error of the query
path (mean distance of the two eyes from the truth over the true pupil distance; truth: the
render's projected pupils, or the photos' hand-marked pupils carried through every damage).

    .venv/bin/python bench/cross_look_bench.py --products 300 --photos-per-face 50
    .venv/bin/python bench/cross_look_bench.py --model retrained=glasses@SHA  # a second row
    .venv/bin/python bench/cross_look_bench.py --decompose  # which ingredient carries the gap

Contact sheets of the photo looks land in WORK/sheets/. Rows: `--model LABEL=REF` (repeatable;
REF: packaged, imagenet or NAME@SHA published in the work store; default packaged). Everything
(catalogue, gallery renders, query renders, photos, feature shards, indexes) is cached under
--work, so a re-run or a new row pays only for what is new.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

if TYPE_CHECKING:
    from second_look import Damage

LOOKS = ("own/procedural", "own/astronaut", "own/hopper", "second/astronaut", "second/hopper")
FACES = ("astronaut", "hopper")
#: --decompose: looks that swap one ingredient between the own and the second look.
DECOMPOSED = ("own-drawn+harsh-damage", "second-drawn+own-damage", "second+linear-colour")
#: The packaged models' train look (what their cards describe).
PACKAGED_TRAIN_LOOK = "own renders (procedural heads + Hopper's photo)"


def record_in_card(path: Path, report: dict[str, Any], label: str, args: argparse.Namespace) -> None:
    """Write one row's figures into a model card, with how to reproduce them; the weights and
    their sha256 are untouched (the card's other fields say how they were made)."""
    card = json.loads(path.read_text())
    row = report["rows"][label]
    key = f"cross_look_bench_{report['products']}"
    card[key] = {
        "bench": f"bench/cross_look_bench.py --products {report['products']} --seed {args.seed} "
        f"--photos-per-face {args.photos_per_face}",
        "catalogue_seed": report["catalogue_seed"],
        "gallery_views": report["gallery_views"],
        "face_model_sha": report["face_model_sha"],
        "note": "astronaut: the unseen face; hopper: seen in training; second: bench/second_look.py, "
        "an independent compositor no training image came from",
        "looks": {
            look: {k: v for k, v in cell.items() if k not in ("refusals", "ranks")}
            for look, cell in row["looks"].items()
            if look in LOOKS  # the decomposition's looks are a diagnosis, not the model's figures
        },
    }
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    print(f"recorded row {label!r} in {path} ({key})")


def chosen_rows(rows: list[dict[str, Any]], per_face: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Which products each face wears (the same in both looks, so looks compare on the same
    products): a seeded draw spread over the whole catalogue, different products per face."""
    order = np.random.default_rng([seed, 33]).permutation(len(rows))
    picks = [rows[int(i)] for i in order]
    return {
        face: [picks[(k * len(FACES) + f) % len(picks)] for k in range(per_face)]
        for f, face in enumerate(FACES)
    }


def pupils_of(face: str) -> np.ndarray:
    from face_bench import UNSEEN_FACE_PUPILS

    from glassfinder.heads.training_photo import TRAINING_PHOTO_PUPILS

    return np.asarray(UNSEEN_FACE_PUPILS if face == "astronaut" else TRAINING_PHOTO_PUPILS, float)


def _cached(path: Path, make: Any) -> dict[str, Any]:
    """A photo and its record (product, true eyes) on disk: made once, read after."""
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        data, record = make()
        meta.write_text(json.dumps(record))
        path.write_bytes(data)
    return {**json.loads(meta.read_text()), "path": str(path)}


#: (photo, true pupils on it, photo number, face number) -> (JPEG bytes, 2x3 affine to the JPEG).
OwnDamage = Callable[[np.ndarray, np.ndarray, int, int], tuple[bytes, np.ndarray]]


def _usual_damage(rgb: np.ndarray, pupils: np.ndarray, i: int, f: int) -> tuple[bytes, np.ndarray]:
    from glassfinder.embed.augment import phone_damage_mapped

    return phone_damage_mapped(rgb, np.random.default_rng([i, 41, f]))


def own_photos(
    work: Path,
    store: Any,
    chosen: dict[str, list[dict[str, Any]]],
    *,
    look: str = "own",
    damage: OwnDamage = _usual_damage,
) -> dict[str, list[dict[str, Any]]]:
    """The product's renderer on the two photos, damaged by phone_damage_mapped (eyes tracked).
    `damage` swaps the damage for the gap decomposition (`look` names the result)."""
    from photo_bench import face_photos

    from glassfinder.heads.photos import analyse_photo, crop_mapping
    from glassfinder.search.samples import photo_wearing

    faces = face_photos()
    out: dict[str, list[dict[str, Any]]] = {}
    for face, rows in chosen.items():
        folder = work / "looks" / look / face
        folder.mkdir(parents=True, exist_ok=True)
        pupils = _apply(crop_mapping(analyse_photo(faces[face], f"{face}.png")[0].crop_box), pupils_of(face))

        def make(
            i: int, row: dict[str, Any], face: str = face, pupils: np.ndarray = pupils
        ) -> tuple[bytes, dict]:
            rgb = photo_wearing(store, row, faces[face], f"{face}.png", seed=3000 + i)
            data, m = damage(rgb, pupils, i, FACES.index(face))
            return data, {"product_id": str(row["product_id"]), "eyes": _apply(m, pupils).tolist()}

        out[f"{look}/{face}"] = [
            _cached(folder / f"{i:03d}-{row['product_id']}.jpg", lambda i=i, row=row: make(i, row))
            for i, row in enumerate(rows)
        ]
    return out


def second_photos(
    work: Path,
    store: Any,
    chosen: dict[str, list[dict[str, Any]]],
    *,
    look: str = "second",
    damage: Damage | None = None,
    colour_as_srgb: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """bench/second_look.py on the two photos (its own compositing and damage). `damage` and
    `colour_as_srgb` swap one ingredient for the gap decomposition (`look` names the result);
    the generator's seeds are the second look's, so each swap changes that ingredient alone."""
    from photo_bench import face_photos
    from PIL import Image
    from second_look import LayerRenderer, wear

    from glassfinder.catalog.ingest import catalog_asset_key
    from glassfinder.face.detect import detect_face

    faces = face_photos()
    renderer: LayerRenderer | None = None
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        for face, rows in chosen.items():
            folder = work / "looks" / look / face
            folder.mkdir(parents=True, exist_ok=True)
            rgb = np.asarray(Image.open(io.BytesIO(faces[face])).convert("RGB"))
            nose = detect_face(rgb, face).landmarks5_xy[4]  # yaw from dlib's 5 points

            def make(i: int, row: dict[str, Any], rgb: np.ndarray = rgb, face: str = face,
                     nose: np.ndarray = nose) -> tuple[bytes, dict]:  # fmt: skip
                nonlocal renderer
                renderer = renderer or LayerRenderer()
                glb = store.get(catalog_asset_key(str(row["asset_sha256"])))
                rng = np.random.default_rng([i, 43, FACES.index(face)])
                data, eyes, record = wear(
                    rgb, pupils_of(face), nose, glb, row, renderer, rng,
                    damage=damage, colour_as_srgb=colour_as_srgb,
                )  # fmt: skip
                return data, {"product_id": str(row["product_id"]), "eyes": eyes.tolist(), "drawn": record}

            out[f"{look}/{face}"] = [
                _cached(folder / f"{i:03d}-{row['product_id']}.jpg", lambda i=i, row=row: make(i, row))
                for i, row in enumerate(rows)
            ]
    finally:
        if renderer is not None:
            renderer.close()
    return out


def decomposed_photos(
    work: Path, store: Any, chosen: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """The gap between the own and the second look, one ingredient at a time: the own renders
    with the second look's damage, the second look's drawing with the own damage, and the second
    look with base colours read as the assets mean them (linear) instead of as display sRGB."""
    from second_look import face_box, harsh_phone_damage

    from glassfinder.embed.augment import phone_damage_mapped

    def harsh(rgb: np.ndarray, pupils: np.ndarray, i: int, f: int) -> tuple[bytes, np.ndarray]:
        return harsh_phone_damage(rgb, face_box(pupils, rgb.shape[:2]), np.random.default_rng([i, 43, f]))

    def own_damage(rgb: np.ndarray, keep: Any, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
        return phone_damage_mapped(rgb, rng)

    out = own_photos(work, store, chosen, look=DECOMPOSED[0], damage=harsh)
    out |= second_photos(work, store, chosen, look=DECOMPOSED[1], damage=own_damage)
    out |= second_photos(work, store, chosen, look=DECOMPOSED[2], colour_as_srgb=False)
    return out


def procedural_photos(work: Path, store: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One view per product on held-out procedural heads, damaged like the own-look photos."""
    from embed_eval_bench import QUERY_SPEC, spec_of

    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY
    from glassfinder.embed.augment import phone_damage_mapped
    from glassfinder.embed.data import eyes_of, shard_keys
    from glassfinder.render.job import render_catalog
    from glassfinder.store.shards import read_shard

    spec = spec_of({**QUERY_SPEC, "views_per_asset": 1})
    shas = {str(r["asset_sha256"]) for r in rows}
    render_catalog(f"{store.uri}/{CATALOG_MANIFEST_KEY}", spec, store, progress=True, assets=shas)
    folder = work / "looks" / "own" / "procedural"
    folder.mkdir(parents=True, exist_ok=True)
    product_of = {str(r["asset_sha256"]): str(r["product_id"]) for r in rows}
    number = {str(r["product_id"]): i for i, r in enumerate(rows)}
    photos = []
    for key in shard_keys(store, spec.spec_hash):
        table = read_shard(
            store, key, "image", columns=["view_key", "asset_sha256", "image", "eye_left_xy", "eye_right_xy"]
        )
        eyes = eyes_of(table) - 0.5  # the renderer's window coordinates -> pixel-index coordinates
        for j in range(table.num_rows):
            sha = table.column("asset_sha256")[j].as_py()
            if sha not in product_of:
                continue
            pid = product_of[sha]

            def make(
                j: int = j, table: Any = table, eyes: np.ndarray = eyes, pid: str = pid
            ) -> tuple[bytes, dict]:
                from PIL import Image

                rgb = np.asarray(Image.open(io.BytesIO(table.column("image")[j].as_py())).convert("RGB"))
                data, m = phone_damage_mapped(rgb, np.random.default_rng([number[pid], 47]))
                return data, {"product_id": pid, "eyes": _apply(m, eyes[j]).tolist()}

            photos.append(_cached(folder / f"{pid}.jpg", make))
    return photos


def contact_sheet(photos: list[dict[str, Any]], path: Path, *, tile_px: int = 200, columns: int = 10) -> None:
    """The look's photos as a grid of thumbnails (what to look at before believing its figures)."""
    from PIL import Image

    rows = -(-len(photos) // columns)
    sheet = Image.new("RGB", (columns * tile_px, rows * tile_px), (255, 255, 255))
    for k, p in enumerate(photos):
        img = Image.open(p["path"]).convert("RGB")
        img.thumbnail((tile_px, tile_px))
        sheet.paste(img, ((k % columns) * tile_px, (k // columns) * tile_px))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=88)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, float) @ m[:, :2].T + m[:, 2]


def search_look(engine: Any, photos: list[dict[str, Any]], family: dict[str, str]) -> dict[str, Any]:
    """Top-1/top-10, refusals, same-shape-other-colourway misses and eye error of one look, and
    how near the true frame is when it is not first: searched to the top 100 (a few per cent of a
    3,200-product catalogue), the share found there and the median rank of the searched photos
    (beyond 100 counted as 101), so a model that brings the frame nearer shows before it is first."""
    from glassfinder.errors import QueryRefusedError
    from glassfinder.search.query import MAX_TOP_K

    ranks: list[int] = []
    searched: list[int] = []  # the photos not refused; beyond the top 100 counted as 101
    errors: list[float] = []
    refusals: Counter[str] = Counter()
    colourway = 0
    for p in photos:
        path = Path(p["path"])
        try:
            result = engine.search(path.read_bytes(), path.name, k=MAX_TOP_K)
        except QueryRefusedError as exc:
            refusals[exc.reason] += 1
            ranks.append(0)
            continue
        ids = [h.product_id for h in result.hits]
        rank = ids.index(p["product_id"]) + 1 if p["product_id"] in ids else 0
        ranks.append(rank)
        searched.append(rank if rank else MAX_TOP_K + 1)
        if rank != 1 and ids and family.get(ids[0]) == family.get(p["product_id"]):
            colourway += 1
        truth = np.asarray(p["eyes"])
        found = np.asarray(result.eyes_xy)
        errors.append(
            float(np.linalg.norm(found - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[1]))
        )
    r = np.array(ranks)
    n = len(r)
    return {
        "photos": n,
        "top1": round(float((r == 1).mean()), 3) if n else None,
        "top10": round(float(((r >= 1) & (r <= 10)).mean()), 3) if n else None,
        "refused": int(sum(refusals.values())),
        "refusals": dict(refusals),
        "top1_misses_same_shape_other_colourway": colourway,
        "eye_error_median": round(float(np.median(errors)), 4) if errors else None,
        "eye_error_p90": round(float(np.quantile(errors, 0.9)), 4) if errors else None,
        f"top{MAX_TOP_K}": round(float(((r >= 1) & (r <= MAX_TOP_K)).mean()), 3) if n else None,
        "median_rank_searched": float(np.median(searched)) if searched else None,
        "ranks": ranks,  # per photo, in the look's order (0: refused or not in the top 100)
    }


def paired_gain(new: list[int], old: list[int], k: int, seed: int = 0) -> dict[str, float]:
    """Top-k gain of one row over another on the same photos, with a seeded paired bootstrap's
    95% interval: with 50-150 photos a face, a gain whose interval holds 0 is the photos' noise."""
    from scipy.stats import bootstrap

    if len(new) != len(old):
        raise ValueError(f"paired rows need the same photos: {len(new)} ranks against {len(old)}")
    hit_new, hit_old = ((np.array(r) >= 1) & (np.array(r) <= k) for r in (new, old))
    diff = hit_new.astype(float) - hit_old.astype(float)
    if np.ptp(diff) == 0:  # every photo moved alike: no spread to resample
        low = high = float(diff[0])
    else:
        ci = bootstrap(
            (diff,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(seed)
        ).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return {"gain": round(float(diff.mean()), 3), "low": round(low, 3), "high": round(high, 3)}


def print_paired_gains(report: dict[str, Any]) -> None:
    """Each later row against the first, photo by photo (recorded in the report as `vs_first`)."""
    from glassfinder.search.query import MAX_TOP_K

    labels = list(report["rows"])
    if len(labels) < 2:
        return
    first = report["rows"][labels[0]]["looks"]
    print(f"\ngain over {labels[0]} on the same photos, with the paired bootstrap's 95% interval")
    for label in labels[1:]:
        entry = report["rows"][label]
        entry["vs_first"] = {}
        for look, c in entry["looks"].items():
            gains = {f"top{k}": paired_gain(c["ranks"], first[look]["ranks"], k) for k in (1, 10, MAX_TOP_K)}
            entry["vs_first"][look] = gains
            cells = "  ".join(
                f"{f} {g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" for f, g in gains.items()
            )
            print(f"{label:<34.34} {look:<20} {cells}")


def main() -> None:
    from embed_eval_bench import GALLERY_VIEWS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--work", default=".glassfinder/cross-look")
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7, help="catalogue seed (the packaged model's is 4242)")
    parser.add_argument("--photos-per-face", type=int, default=50)
    parser.add_argument("--gallery-views", type=int, default=GALLERY_VIEWS)
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="a row: LABEL=REF (REF: packaged, imagenet or NAME@SHA in the work store); repeatable",
    )
    parser.add_argument(
        "--card",
        action="append",
        default=None,
        help="LABEL=PATH: record that row's figures in the model card at PATH (cross_look_bench)",
    )
    parser.add_argument(
        "--decompose",
        action="store_true",
        help="also search looks that swap one ingredient between the own and the second look "
        "(damage, drawing, colour reading), to see which part of the gap each carries",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(2)
    from photo_bench import index_for, model_refs, prepare

    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY
    from glassfinder.face.net import packaged_analyser
    from glassfinder.search.query import MAX_TOP_K, QueryEngine

    work = Path(args.work)
    t0 = time.perf_counter()
    store, spec_hash, rows = prepare(work, args.products, args.seed, args.gallery_views)
    wanted = [m.split("=", 1) if "=" in m else [m, m] for m in (args.model or ["packaged"])]
    refs = model_refs(store, [ref for _, ref in wanted])
    chosen = chosen_rows(rows, args.photos_per_face, args.seed)
    looks: dict[str, list[dict[str, Any]]] = {"own/procedural": procedural_photos(work, store, rows)}
    looks |= own_photos(work, store, chosen)
    looks |= second_photos(work, store, chosen)
    if args.decompose:
        looks |= decomposed_photos(work, store, chosen)
    print(
        f"queries ready in {time.perf_counter() - t0:.0f} s: "
        + ", ".join(f"{k} {len(v)}" for k, v in looks.items())
    )
    for look in list(looks)[1:]:
        contact_sheet(looks[look], work / "sheets" / f"{look.replace('/', '-')}.jpg")
    family = {str(r["product_id"]): str(r.get("family_id")) for r in rows}
    report: dict[str, Any] = {
        "products": len(rows),
        "catalogue_seed": args.seed,
        "gallery_spec": spec_hash,
        "gallery_views": args.gallery_views,
        "photos_per_face": args.photos_per_face,
        "face_model_sha": packaged_analyser()[0],
        "rows": {},
    }
    for label, ref in wanted:
        index = index_for(store, label, refs[ref], f"{store.uri}/{CATALOG_MANIFEST_KEY}", spec_hash)
        engine = QueryEngine(store, index)
        train_look = PACKAGED_TRAIN_LOOK if ref == "packaged" else "see the model's card"
        cells = {look: search_look(engine, photos, family) for look, photos in looks.items()}
        report["rows"][label] = {"ref": refs[ref], "train_look": train_look, "looks": cells}
    print(
        f"\n{len(rows)} products x {args.gallery_views} gallery views; {args.photos_per_face} photos "
        f"per face per look; {len(looks['own/procedural'])} procedural queries"
    )
    head = (
        "model",
        "test look",
        "top1",
        "top10",
        f"top{MAX_TOP_K}",
        "med rank",
        "refused",
        "colourway",
        "eye err",
    )
    print("{:<34} {:<20} {:>6} {:>6} {:>6} {:>8} {:>8} {:>9} {:>8}".format(*head))
    for label, entry in report["rows"].items():
        for look, c in entry["looks"].items():
            seen = {"hopper": " (seen)", "astronaut": " (unseen)"}.get(look.split("/")[1], "")
            refused = f"{c['refused']}/{c['photos']}"
            colourway = c["top1_misses_same_shape_other_colourway"]
            print(
                f"{label:<34.34} {look + seen:<20} {c['top1']:>6.3f} {c['top10']:>6.3f} "
                f"{c[f'top{MAX_TOP_K}']:>6.3f} {c['median_rank_searched']!s:>8} {refused:>8} "
                f"{colourway:>9} {c['eye_error_median']!s:>8}"
            )
    print_paired_gains(report)
    (work / "report.json").write_text(json.dumps(report, indent=2))
    for label, path in (c.split("=", 1) for c in args.card or []):
        record_in_card(Path(path), report, label, args)
    print(f"report: {work / 'report.json'} (seconds: {time.perf_counter() - t0:.0f})")


if __name__ == "__main__":
    main()
