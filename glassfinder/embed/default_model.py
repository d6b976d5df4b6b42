"""Retrain the packaged default embedding model: `python -m glassfinder.embed.default_model`.

It lives in the package (not bench/) because its output ships in the package: whoever changes
the model, the renderer or the crop reruns this and commits `glassfinder/models/glasses.pt` and
its card. Steps, each skipped when its output exists (the work folder is a resumable run):

1. generate a catalogue with seed TRAINING_SEED (no benchmark, test or demo uses it) and render
   it twice: on procedural heads 0-799 (training_spec: 256 px, mostly clear optical lenses), and
   on Grace Hopper's photo with her own frames inpainted away (photo_training_spec), the one real
   face training may use: real skin, hair and photo texture around the frame, which no procedural
   head has. The astronaut photo is never used to train or calibrate a packaged model;
2. compare backbone depths briefly on a subset of products (MobileNetV2 cut after the 160-channel
   stage with mean+max pooling, vs the whole trunk with GeM) and keep the best on validation mAP;
3. fine-tune the kept one from ImageNet on every training product, with checkpoints and resume
   (`--init default` instead fine-tunes the packaged model further, e.g. on a grown catalogue);
4. write the weights and a card (config, data spec, figures, ImageNet weights' licence) into
   glassfinder/models/.

Budget: ~1.5 h on 2 CPU cores for the default sizes (render ~25 min, training ~1 h).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glassfinder.catalog.generate import generate_catalog
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, ingest_manifest
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.embed.augment import BASIC_AUGMENT, CAMERA_AUGMENT, AugmentConfig
from glassfinder.embed.data import ViewSet
from glassfinder.embed.model import mobilenet_config, weights_bytes
from glassfinder.embed.train import (
    INIT_DEFAULT,
    INIT_IMAGENET,
    TrainConfig,
    TrainResult,
    load_training_views,
    resolve_init,
    train_model,
)
from glassfinder.heads.portraits import colourise, load_portraits, split_portraits
from glassfinder.heads.training_photo import training_photo_bare
from glassfinder.layout import training_bank_prefix
from glassfinder.nets.imagenet import SOURCE
from glassfinder.nets.packaged import MODELS_DIR, card_path, weights_path
from glassfinder.nets.weights import model_sha
from glassfinder.render.job import render_catalog_specs
from glassfinder.render.packshot import encode_png
from glassfinder.render.spec import OUTPUT_STORE_BANK, PRESETS, RenderSpec
from glassfinder.settings import portraits_dir
from glassfinder.store.base import ObjectStore
from glassfinder.store.local import LocalStore

#: Catalogue seed of the packaged model's training data (benchmarks use 0, 5, 7, 11, 99).
TRAINING_SEED = 4242
TRAINING_PRODUCTS = 1000
MODEL_NAME = "glasses"
#: Views of each product on Hopper's photo (her pose is fixed; lenses, light and fit vary).
PHOTO_VIEWS = 2
TRAINING_PHOTO_BANK = "hopper-bank"
TRAINING_PHOTO_BARE_NAME = "grace_hopper_bare.png"
#: Views of each product on the real portraits' photo bank (one portrait drawn per view).
PORTRAIT_VIEWS = 2
PORTRAIT_BANK = "portrait-bank"
#: Share of the grey portraits colourised for the bank: shoppers' photos are in colour, but a
#: grey face keeps the frame's colour as the only colour in the crop, which is worth seeing too.
PORTRAIT_COLOUR_P = 0.75


#: --augment: the training crops' damage (embed/augment.py says what each draws).
AUGMENTS = {"appearance": AugmentConfig(), "basic": BASIC_AUGMENT, "camera": CAMERA_AUGMENT}


@dataclass(frozen=True)
class Materials:
    """How the training renders draw the frames' materials (the render spec's two knobs)."""

    material_jitter: float = 0.0  # RenderSpec.material_jitter
    srgb_reading_p: float = 0.0  # RenderSpec.srgb_reading_p


#: --materials: the assets' own materials; every view's frame and lens materials drawn anew, in
#: full or mildly (0.4: colour read through a gamma of 0.83-1.48 and a gain of 0.86-1.10, where
#: the full draws' 0.67-2.2 and 0.65-1.25 made one colourway read as another); or only the colour
#: reading, half the views' frame colours read as display sRGB.
MATERIALS = {
    "own": Materials(),
    "mild": Materials(material_jitter=0.4),
    "random": Materials(material_jitter=1.0),
    "readings": Materials(srgb_reading_p=0.5),
}


def training_spec(materials: Materials = MATERIALS["own"]) -> RenderSpec:
    """The render spec of the packaged model's training views (the 'catalog' preset's look)."""
    return replace(
        PRESETS["catalog"],
        views_per_asset=6,
        seed=TRAINING_SEED,
        split_fractions=(0.9, 0.1, 0.0),
        material_jitter=materials.material_jitter,
        srgb_reading_p=materials.srgb_reading_p,
    )


def photo_training_spec(bank: str, materials: Materials = MATERIALS["own"]) -> RenderSpec:
    """The training spec's look on the photos under key prefix `bank` of the store it renders into."""
    return replace(
        training_spec(materials), face_source=f"{OUTPUT_STORE_BANK}{bank}", views_per_asset=PHOTO_VIEWS
    )


def prepare_photo_bank(store: ObjectStore) -> str:
    """The store's Hopper bank: her photo with her frames inpainted away (written once); its prefix."""
    bank = training_bank_prefix(TRAINING_PHOTO_BANK)
    key = bank + TRAINING_PHOTO_BARE_NAME
    if not store.exists(key):
        store.put(key, encode_png(training_photo_bare()))
    return bank


def portrait_training_spec(bank: str, materials: Materials = MATERIALS["own"]) -> RenderSpec:
    """The training spec's look on the bare real portraits under key prefix `bank`
    (prepare_portrait_bank) of the store it renders into."""
    return replace(
        training_spec(materials), face_source=f"{OUTPUT_STORE_BANK}{bank}", views_per_asset=PORTRAIT_VIEWS
    )


def prepare_portrait_bank(store: ObjectStore, portraits_root: Path) -> str:
    """The store's portrait bank: the train split's bare portraits (never the calibrate or test
    split, never the astronaut), most colourised, each by a generator seeded from its id, written
    once; its prefix."""
    bank = training_bank_prefix(PORTRAIT_BANK)
    for portrait in split_portraits(load_portraits(portraits_root))["train"]:
        key = f"{bank}{portrait.id}.png"
        if portrait.glasses != "no" or store.exists(key):
            continue
        digest = hashlib.sha256(portrait.id.encode()).digest()
        rng = np.random.default_rng([TRAINING_SEED, int.from_bytes(digest[:8], "big")])
        rgb = np.asarray(Image.open(portrait.path).convert("RGB"))
        rgb = colourise(rgb, rng) if rng.random() < PORTRAIT_COLOUR_P else rgb
        store.put(key, encode_png(rgb))
    return bank


#: Depth/pooling candidates compared before the full run (ModelConfig overrides).
CANDIDATES: dict[str, dict[str, Any]] = {
    "mnv2-d17-meanmax": {"depth": 17, "pooling": "meanmax"},
    "mnv2-d19-gem": {"depth": 19, "pooling": "gem"},
}


def prepare_catalog(work: Path, products: int, seed: int = TRAINING_SEED) -> LocalStore:
    """A generated catalogue, generated and ingested once into work/store (reused by the benches).

    Asked for more products than it holds, it is generated again at the new size: a seed's
    families come out the same whatever the count, and ingest skips the assets it has seen.
    """
    store = LocalStore(work / "store")
    held = len(read_manifest_rows(store, CATALOG_MANIFEST_KEY)) if store.exists(CATALOG_MANIFEST_KEY) else 0
    if held < products:
        t0 = time.perf_counter()
        generate_catalog(LocalStore(work / "src"), products, seed, progress=True)
        ingest_manifest(str(work / "src" / "manifest.parquet"), dest=store, progress=True)
        print(f"catalogue: {products} products (seed {seed}) in {time.perf_counter() - t0:.0f} s")
    return store


def prepare(
    work: Path,
    products: int,
    render_limit: int | None = None,
    portraits_root: Path | None = None,
    materials: Materials = MATERIALS["own"],
    layers: bool = False,
) -> tuple[LocalStore, list[RenderSpec]]:
    """Generate, ingest and render the training catalogue under each spec (skipping what exists):
    procedural heads, Hopper's photo, and the real portraits unless `portraits_root` is None
    (layers: the portraits' glasses as layers alone, for training to put onto a new face each time)."""
    store = prepare_catalog(work, products)
    specs = [training_spec(materials), photo_training_spec(prepare_photo_bank(store), materials)]
    if portraits_root is not None:
        bank = prepare_portrait_bank(store, portraits_root)
        specs.append(replace(portrait_training_spec(bank, materials), glasses_layer=layers))
    reports = render_catalog_specs(
        f"{store.uri}/{CATALOG_MANIFEST_KEY}", specs, store, progress=True, limit=render_limit
    )
    for spec, report in zip(specs, reports, strict=True):
        print(
            f"render spec {spec.spec_hash} ({spec.face_source}): {report.rendered} rendered "
            f"({report.views} views), {report.skipped} there already, in {report.seconds:.0f} s"
        )
    return store, specs


def write_packaged(
    result: TrainResult, specs: list[RenderSpec], out_dir: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """Weights + card into out_dir (glassfinder/models/ by default)."""
    weights = weights_bytes(result.model)
    card = {
        **result.card(),
        "name": MODEL_NAME,
        "model_sha": model_sha(weights),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "weights_bytes": len(weights),
        "config": result.model.config.to_dict(),
        "architecture": result.model.config.architecture,
        "pretrained": SOURCE,
        "training_data": {
            "catalogue_seed": TRAINING_SEED,
            "generator": "glassfinder.catalog.generate (procedural frames)",
            "faces": (
                "procedural heads 0-799, Grace Hopper's photo (matplotlib's grace_hopper.jpg) with "
                "her own frames inpainted away, and (where a spec's face_source names portrait-bank) "
                "the bare portraits of the labelled set's train split, most colourised; the "
                "astronaut photo is never used"
            ),
            "render_specs": {s.spec_hash: json.loads(s.canonical_json()) for s in specs},
        },
        "retrain": "python -m glassfinder.embed.default_model",
        **extra,
    }
    if "products" in card:  # how much of the generated catalogue was rendered and used
        card["training_data"]["products"] = card.pop("products")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path(MODEL_NAME, out_dir).write_bytes(weights)
    card_path(MODEL_NAME, out_dir).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def _portable_args(argv: list[str] | None) -> list[str]:
    """The command line minus the values that name this machine's folders."""
    args = list(sys.argv[1:] if argv is None else argv)
    out: list[str] = []
    for i, a in enumerate(args):
        name = a.split("=", 1)[0]
        value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
        if name in ("--work", "--out-dir", "--portraits") and value != "none":
            continue
        if i and args[i - 1] in ("--work", "--out-dir", "--portraits") and a != "none":
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.layers and args.portraits == "none":
        parser.error("--layers renders the portraits' glasses as layers: it needs --portraits, got none")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("PML").setLevel(logging.WARNING)
    return retrain_default_model(_options(args, argv))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--work", default=".glassfinder/default-model", help="resumable work folder")
    parser.add_argument("--products", type=int, default=TRAINING_PRODUCTS)
    parser.add_argument(
        "--render-limit", type=int, default=None, help="render (and train on) the first N products only"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--compare-products", type=int, default=150)
    parser.add_argument("--compare-epochs", type=int, default=2)
    parser.add_argument("--candidate", default=None, help=f"skip the comparison: one of {list(CANDIDATES)}")
    parser.add_argument(
        "--init",
        choices=(INIT_IMAGENET, INIT_DEFAULT),
        default=INIT_IMAGENET,
        help="start from ImageNet (the default), or fine-tune the packaged model (skips the comparison)",
    )
    parser.add_argument(
        "--stage", choices=("render", "all"), default="all", help="stop after rendering, or go on"
    )
    parser.add_argument(
        "--portraits",
        default=None,
        help="labelled real portraits whose bare train split the frames are also rendered onto "
        "(default: GLASSFINDER_PORTRAITS_DIR or ../shared/faces/portraits); 'none' leaves them out",
    )
    parser.add_argument(
        "--augment",
        choices=tuple(AUGMENTS),
        default="appearance",
        help="training augmentation: 'appearance' (the default: tone curve, resolution loss and "
        "lens glare besides the basic damage), 'basic' (without them, for comparison) or 'camera' "
        "(appearance plus motion blur, vignetting, sharpening halos and a second JPEG)",
    )
    parser.add_argument(
        "--materials",
        choices=tuple(MATERIALS),
        default="own",
        help="the frames' and lenses' materials in the training renders: the assets' own (the "
        "default), drawn anew per view (gloss, metalness, colour reading, lens tint and reflection) "
        "mildly or in full, or 'readings': half the views' frame colours read as display sRGB",
    )
    parser.add_argument(
        "--layers",
        action="store_true",
        help="render the portraits' glasses as layers alone and put each onto a new portrait every "
        "time training draws it (the same glasses as the portrait renders, never the same face)",
    )
    parser.add_argument(
        "--trunk-lr-scale",
        type=float,
        default=1.0,
        help="the backbone's learning rate as a share of the head's (1: the same; 0: frozen)",
    )
    parser.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="weight of the term that holds the backbone's features close to ImageNet's (0: off)",
    )
    parser.add_argument(
        "--imprint",
        action="store_true",
        help="start the loss's product proxies at the initial model's mean embedding of each "
        "product's views instead of at random (for fine-tunes: no first steps spent undoing them)",
    )
    parser.add_argument(
        "--run-name", default=None, help="training folder under WORK/train (default: the model's name)"
    )
    parser.add_argument("--out-dir", default=None, help="default: the package's glassfinder/models/")
    parser.add_argument("--device", default=None)
    return parser


@dataclass(frozen=True)
class RetrainOptions:
    """The command line's choices as plain data (`_parser` says what each one means)."""

    work: Path
    out_dir: Path
    portraits: Path | None
    products: int
    render_limit: int | None
    epochs: int
    compare_products: int
    compare_epochs: int
    candidate: str | None
    init: str
    stage: str
    augment: str
    materials: str
    layers: bool
    trunk_lr_scale: float
    distill: float
    imprint: bool
    run_name: str | None
    device: str | None
    #: The command line minus this machine's folders, for the card's `retrain`.
    portable_args: list[str]


def _options(args: argparse.Namespace, argv: list[str] | None) -> RetrainOptions:
    portraits: Path | None = portraits_dir() if args.portraits is None else Path(args.portraits)
    if args.portraits == "none":
        portraits = None
    return RetrainOptions(
        work=Path(args.work),
        out_dir=Path(args.out_dir) if args.out_dir else MODELS_DIR,
        portraits=portraits,
        products=args.products,
        render_limit=args.render_limit,
        epochs=args.epochs,
        compare_products=args.compare_products,
        compare_epochs=args.compare_epochs,
        candidate=args.candidate,
        init=args.init,
        stage=args.stage,
        augment=args.augment,
        materials=args.materials,
        layers=args.layers,
        trunk_lr_scale=args.trunk_lr_scale,
        distill=args.distill,
        imprint=args.imprint,
        run_name=args.run_name,
        device=args.device,
        portable_args=_portable_args(argv),
    )


def retrain_default_model(opts: RetrainOptions) -> int:
    """Render, compare, train and package (each step resuming from what the work folder holds)."""
    store, specs = prepare(
        opts.work, opts.products, opts.render_limit, opts.portraits, MATERIALS[opts.materials], opts.layers
    )
    if opts.stage == "render":
        return 0
    base, init_from = _base_config(store, specs, opts)
    train_views, val_views = load_training_views(store, base, progress=True)
    comparison: dict[str, Any] = {}
    if init_from:  # fine-tuning keeps the packaged model's architecture
        kept = init_from
    elif opts.candidate is None:
        comparison = compare_candidates(store, base, train_views, val_views, opts)
        kept = max(
            comparison, key=lambda k: comparison[k]["best_val"].get("val_mean_average_precision_at_r", 0)
        )
        print(f"kept {kept}")
    else:
        kept = opts.candidate
    config = base if init_from else replace(base, model=mobilenet_config(**CANDIDATES[kept]))
    result = _train_kept(store, config, kept, (train_views, val_views), opts)
    card = write_packaged(
        result, specs, opts.out_dir, _card_extra(comparison, kept, init_from, config, result, opts)
    )
    print(f"packaged {MODEL_NAME}@{card['model_sha']} ({card['weights_bytes'] / 1e6:.1f} MB)")
    return 0


def _base_config(store: LocalStore, specs: list[RenderSpec], opts: RetrainOptions) -> tuple[TrainConfig, str]:
    """The training config before a backbone is chosen, and the model it fine-tunes ('' for none)."""
    model_config, init_from = resolve_init(store, opts.init, None)
    base = TrainConfig(
        spec_hashes=tuple(s.spec_hash for s in specs if not s.glasses_layer),
        layer_specs=tuple(s.spec_hash for s in specs if s.glasses_layer),
        epochs=opts.epochs,
        model=model_config if init_from else mobilenet_config(),
        init_from=init_from,
        augment=AUGMENTS[opts.augment],
        trunk_lr_scale=opts.trunk_lr_scale,
        distill_weight=opts.distill,
        imprint=opts.imprint,
    )
    return base, init_from


def _only_products(views: ViewSet, keep: set[str]) -> ViewSet:
    return views.subset(np.array([p in keep for p in views.product_ids]))


def compare_candidates(
    store: LocalStore, base: TrainConfig, train_views: ViewSet, val_views: ViewSet, opts: RetrainOptions
) -> dict[str, Any]:
    """Each candidate backbone's brief run on a subset of the training products (all of
    validation), so the full run trains only the one that generalises best."""
    keep = set(sorted(set(train_views.product_ids.tolist()))[: opts.compare_products])
    keep |= set(val_views.product_ids.tolist())
    comparison: dict[str, Any] = {}
    for label, overrides in CANDIDATES.items():
        config = replace(base, epochs=opts.compare_epochs, model=mobilenet_config(**overrides))
        result = train_model(
            store,
            config,
            work_dir=opts.work / "compare" / label,
            resume=(opts.work / "compare" / label).exists(),
            views=(_only_products(train_views, keep), val_views),
            device=opts.device,
        )
        comparison[label] = {
            "epochs": opts.compare_epochs,
            "train_products": result.train_products,
            "history": result.history,
            "best_val": result.best_val,
        }
        print(f"compare {label}: {json.dumps(result.best_val)} ({result.seconds:.0f} s)")
    return comparison


def _train_kept(
    store: LocalStore,
    config: TrainConfig,
    kept: str,
    views: tuple[ViewSet, ViewSet],
    opts: RetrainOptions,
) -> TrainResult:
    """The full run of the kept backbone, resuming from its folder under WORK/train."""
    run_dir = opts.work / "train" / (opts.run_name or kept.replace("@", "-"))
    t0 = time.perf_counter()
    result = train_model(
        store,
        config,
        work_dir=run_dir,
        resume=(run_dir / "last.pt").exists(),
        views=views,
        device=opts.device,
        progress=True,
    )
    print(
        f"trained {kept}: best epoch {result.best_epoch} {json.dumps(result.best_val)} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return result


def _card_extra(
    comparison: dict[str, Any],
    kept: str,
    init_from: str,
    config: TrainConfig,
    result: TrainResult,
    opts: RetrainOptions,
) -> dict[str, Any]:
    """What the card adds about this run: the comparison, the starting point and the data used."""
    return {
        "depth_comparison": comparison,
        "kept": kept,
        "init_from": init_from or INIT_IMAGENET,
        "augment": asdict(config.augment),
        # How this very model was made (the work folder and output dir are left out: paths).
        "retrain": "python -m glassfinder.embed.default_model " + " ".join(opts.portable_args),
        "products": {
            "generated": opts.products,
            "rendered_and_used": min(opts.products, opts.render_limit or opts.products),
            "train": result.train_products,
            "val": result.val_products,
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
