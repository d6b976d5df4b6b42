"""Retrieval evaluation: top-k and mAP of query views against the catalogue, closed- and open-set.

The gallery is the catalogue as the index holds it (every product's renders under the catalogue
spec). Queries are renders under a *different* spec (held-out faces, other poses and lens
colours) damaged like real photos and aligned from noisy eyes. Each query is scored per product
(a product's score aggregates its views' similarities) and the rank of its true product counted.

- closed-set: queries of products the model trained on;
- open-set: queries of 'test' products, never seen in training nor used to pick the epoch.

With one relevant product per query, average precision is 1/rank, so mAP is the mean
reciprocal rank of the true product.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.embed.augment import QUERY_DAMAGE, AugmentConfig
from glassfinder.embed.data import ViewSet, load_views
from glassfinder.embed.infer import Embedder
from glassfinder.embed.model import build_model
from glassfinder.embed.registry import load_model
from glassfinder.errors import BadInputError
from glassfinder.store import open_object
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)

TOP_KS = (1, 5, 10)
CURVE_MAX_N = 20
AGGREGATIONS = ("max", "mean")


@dataclass
class EvalSets:
    gallery: ViewSet
    queries: ViewSet
    split_of: dict[str, str]  # product id -> split of the catalogue spec


def load_eval_sets(
    store: ObjectStore,
    gallery_spec: str,
    query_spec: str,
    embedder: Embedder,
    *,
    damage: AugmentConfig | None = QUERY_DAMAGE,
    seed: int = 0,
    progress: bool = False,
) -> EvalSets:
    geometry = embedder.geometry
    gallery = load_views(store, gallery_spec, geometry, progress=progress)
    queries = load_views(store, query_spec, geometry, progress=progress, damage=damage, seed=seed)
    split_of = dict(
        zip(
            gallery.meta.column("product_id").to_pylist(),
            gallery.meta.column("split").to_pylist(),
            strict=True,
        )
    )
    missing = sorted(set(queries.product_ids.tolist()) - set(split_of))
    if missing:
        raise BadInputError(
            f"{len(missing)} query products are not in the gallery spec {gallery_spec} (e.g. {missing[:3]}): "
            "render the same manifest under both specs"
        )
    return EvalSets(gallery, queries, split_of)


def product_scores(
    sims: np.ndarray, gallery_products: np.ndarray, aggregation: str
) -> tuple[np.ndarray, np.ndarray]:
    """(q, p) per-product scores from (q, g) view similarities, and the (p,) product ids.

    gallery_products: (g,) product id per gallery view.
    """
    order = np.argsort(gallery_products, kind="stable")
    products, starts = np.unique(gallery_products[order], return_index=True)
    sorted_sims = sims[:, order]
    if aggregation == "max":
        scores = np.maximum.reduceat(sorted_sims, starts, axis=1)
    elif aggregation == "mean":
        counts = np.diff(np.append(starts, len(order)))
        scores = np.add.reduceat(sorted_sims, starts, axis=1) / counts
    else:
        raise BadInputError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    return scores, products


def rank_products(
    query_emb: np.ndarray,
    query_products: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_products: np.ndarray,
    aggregation: str,
    *,
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """(q,) 1-based rank of each query's true product, and (q,) the top-1 product id."""
    ranks = np.empty(len(query_emb), dtype=np.int64)
    top1 = np.empty(len(query_emb), dtype=object)
    for s in range(0, len(query_emb), chunk):
        scores, products = product_scores(
            query_emb[s : s + chunk] @ gallery_emb.T, gallery_products, aggregation
        )
        index = {p: i for i, p in enumerate(products)}
        truth = np.array([index[p] for p in query_products[s : s + chunk]])
        true_score = scores[np.arange(len(truth)), truth]
        # Ties count against the query: a product is only found if nothing scores as high.
        ranks[s : s + chunk] = (scores >= true_score[:, None]).sum(axis=1)
        top1[s : s + chunk] = products[scores.argmax(axis=1)]
    return ranks, top1


def summarise(ranks: np.ndarray) -> dict[str, Any]:
    if not len(ranks):
        return {"queries": 0}
    out: dict[str, Any] = {"queries": len(ranks)}
    for k in TOP_KS:
        out[f"top{k}"] = round(float((ranks <= k).mean()), 4)
    out["mAP"] = round(float((1.0 / ranks).mean()), 4)
    out["curve"] = [round(float((ranks <= n).mean()), 4) for n in range(1, CURVE_MAX_N + 1)]
    return out


def evaluate_models(
    sets: EvalSets,
    models: dict[str, Embedder],
    *,
    manifest: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Figures for every model on the same queries; manifest rows name confused families."""
    gallery_products = sets.gallery.product_ids.astype(str)
    query_products = sets.queries.product_ids.astype(str)
    query_split = np.array([sets.split_of[p] for p in query_products])
    settings = {"closed_set": query_split == "train", "open_set": query_split == "test"}
    report: dict[str, Any] = {
        "gallery_views": len(sets.gallery),
        "gallery_products": len(set(gallery_products.tolist())),
        "query_views": {name: int(mask.sum()) for name, mask in settings.items()},
        "query_products": {name: len(set(query_products[mask].tolist())) for name, mask in settings.items()},
        "models": {},
    }
    for label, embedder in models.items():
        t0 = time.perf_counter()
        gallery_emb = embedder.embed(sets.gallery.crops)
        query_emb = embedder.embed(sets.queries.crops)
        seconds = time.perf_counter() - t0
        entry: dict[str, Any] = {"embed_seconds": round(seconds, 1)}
        for aggregation in AGGREGATIONS:
            ranks, top1 = rank_products(query_emb, query_products, gallery_emb, gallery_products, aggregation)
            for name, mask in settings.items():
                figures = summarise(ranks[mask])
                if aggregation == "max":
                    entry[name] = figures
                    if manifest is not None:
                        entry[name]["confusions"] = confusions(query_products[mask], top1[mask], manifest)
                else:
                    entry[name][f"{aggregation}_aggregation"] = {
                        k: v for k, v in figures.items() if k not in ("curve", "queries")
                    }
        report["models"][label] = entry
        log.info(
            "%s: closed-set top1 %s top10 %s | open-set top1 %s top10 %s",
            label,
            entry["closed_set"].get("top1"),
            entry["closed_set"].get("top10"),
            entry["open_set"].get("top1"),
            entry["open_set"].get("top10"),
        )
    return report


def confusions(truth: np.ndarray, top1: np.ndarray, manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the top-1 misses are: colourways of the same shape, or which shape families mixed up."""
    misses = [(t, p) for t, p in zip(truth, top1, strict=True) if t != p]
    same_shape = sum(
        1
        for t, p in misses
        if manifest.get(t, {}).get("family_id")
        and manifest[t]["family_id"] == manifest.get(p, {}).get("family_id")
    )
    pairs = Counter(
        f"{manifest.get(t, {}).get('shape_family')} -> {manifest.get(p, {}).get('shape_family')}"
        for t, p in misses
    )
    by_family = Counter(str(manifest.get(t, {}).get("shape_family")) for t, _ in misses)
    return {
        "misses": len(misses),
        "same_shape_other_colourway": same_shape,
        "missed_by_shape_family": dict(by_family.most_common()),
        "top_confused_pairs": dict(pairs.most_common(10)),
    }


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """report.json and topn.png (top-N accuracy curves, every model and setting) in out_dir."""
    # matplotlib (~0.5 s) only for the report; its backend must be chosen before pyplot is imported,
    # which at module top would set it for every importer of this module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"), as said above

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "report.json", out_dir / "topn.png"
    json_path.write_text(json.dumps(report, indent=2))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    xs = list(range(1, CURVE_MAX_N + 1))
    for label, entry in report["models"].items():
        for setting, style in (("closed_set", "-"), ("open_set", "--")):
            curve = entry.get(setting, {}).get("curve")
            if curve:
                ax.plot(
                    xs, curve, style, marker="o", markersize=3, label=f"{label} {setting.replace('_', '-')}"
                )
    ax.set_xlabel("N")
    ax.set_ylabel("top-N accuracy (true product in first N)")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{report['gallery_products']} products, {report['gallery_views']} catalogue views")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return json_path, png_path


def run_eval(
    store: ObjectStore,
    *,
    gallery_spec: str,
    query_spec: str,
    model_ref: str,
    out_dir: Path,
    manifest_uri: str | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], Path, Path]:
    """Evaluate a published model beside its untrained twin (same architecture and seed)."""
    loaded = load_model(store, model_ref)
    trained = Embedder(loaded.model, device=device)
    training_seed = int(loaded.card.get("training", {}).get("seed", 0))
    baseline = Embedder(build_model(loaded.model.config, seed=training_seed).eval(), device=device)
    sets = load_eval_sets(store, gallery_spec, query_spec, trained, seed=seed, progress=progress)
    manifest = None
    if manifest_uri:
        mstore, mkey = open_object(manifest_uri)
        manifest = {str(r["product_id"]): r for r in read_manifest_rows(mstore, mkey)}
    report = evaluate_models(
        sets, {f"{loaded.name}@{loaded.sha}": trained, "untrained-baseline": baseline}, manifest=manifest
    )
    report.update(
        gallery_spec=gallery_spec,
        query_spec=query_spec,
        model=f"{loaded.name}@{loaded.sha}",
        damage_seed=seed,
        query_damage=QUERY_DAMAGE.__dict__,
    )
    json_path, png_path = write_report(report, out_dir)
    return report, json_path, png_path
