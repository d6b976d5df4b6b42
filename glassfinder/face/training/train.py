"""Retrain the packaged face-analysis model: `python -m glassfinder.face.training.train --work DIR`.

Steps, each skipped when its output exists (the work folder is a resumable run):

1. generate a catalogue (face.training.data.TRAINING_SEED, which no benchmark uses) whose frames are worn;
2. render SHARDS shards of whole-face views on procedural heads (never a photo: the astronaut is
   the unseen test face) with landmark truth and dlib's box on each, split over --workers
   processes;
3. train the network from ImageNet with checkpoints every epoch (resume continues exactly);
4. render frames onto Grace Hopper's photo with her own frames inpainted away, and adapt the
   network for a few epochs on those real-face samples mixed with the renders (--no-photos skips);
5. with the trunk frozen, fit the glasses-presence decision on the eye band (face/training/presence.py:
   training renders, damaged uploads of Hopper's photo, bare and wearing frames, and the train
   split of the real portraits, --portraits, split by heads/portraits.py);
6. measure it on held-out identities beside dlib's 5-point landmarks, set the presence threshold
   on the calibrate split of the portraits, and write the weights and a card into
   glassfinder/models/;
7. fit the face verifier on its features (face/training/verify.py: faces, the train portraits among
   them, against non-face photos) and add it to the weights and the card;
8. measure the finished model on the portraits' test split through the query path's detector,
   verifier, shape check and threshold, and add that to the card (`evaluation.portraits.test`).

`--init packaged` skips steps 3-4 and starts step 5 from the packaged model's trunk (the card
records which model that was, as `trunk_model_sha`).

Budget: ~45 min on 2 idle CPU cores for steps 1-3, ~10 min for step 4, ~3 min for step 5 (much
longer under other load).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from glassfinder.face.net import load_trunk, packaged_analyser
from glassfinder.face.training.data import render_shard, shard_path, training_assets
from glassfinder.face.training.fit import (
    PORTRAIT_DAMAGED_VIEWS,
    FitConfig,
    PresenceConfig,
    TrunkInit,
    train_and_package,
)
from glassfinder.face.training.photo_data import load_or_render_photo_samples
from glassfinder.face.training.presence import portrait_figures, portrait_views
from glassfinder.face.training.verify import DEFAULT_SHARDS as VERIFIER_SHARDS
from glassfinder.face.training.verify import (
    add_portraits_argument,
    fit_and_package,
    non_face_photos,
    split_portraits_from,
)
from glassfinder.nets.packaged import card_path, read_packaged
from glassfinder.workers import exit_with_parent

DEFAULT_SHARDS = 30
MODEL_NAME = "face-analysis"


def _render_worker(work: Path, shards: list[int], parent: int) -> None:
    exit_with_parent(parent)
    picked = training_assets(work)
    for shard in shards:
        t0 = time.perf_counter()
        render_shard(work / "shards", shard, picked)
        print(f"shard {shard}: {time.perf_counter() - t0:.0f} s", flush=True)


def render_all(work: Path, shards: int, workers: int) -> None:
    training_assets(work)  # generate the catalogue once, before workers read it
    todo = [s for s in range(shards) if not shard_path(work / "shards", s).exists()]
    if not todo:
        return
    ctx = multiprocessing.get_context("spawn")
    args = [(work, todo[k::workers], os.getpid()) for k in range(workers)]
    procs = [ctx.Process(target=_render_worker, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise SystemExit(f"render workers failed with exit codes {failed}")


def packaged_trunk() -> TrunkInit:
    """The packaged face model's network, as stages 1-2 left it, and their cost from its card."""
    packaged = read_packaged(MODEL_NAME)
    net, _ = load_trunk(packaged.weights, str(packaged.path))
    stages = {k: v for k, v in packaged.card.get("train_seconds_by_stage", {}).items() if k != "presence"}
    seen = packaged.card.get("data", {})
    data = {k: seen[k] for k in ("faces", "photo_samples") if k in seen}
    # A model that was itself refitted this way names the model its trunk came from.
    return TrunkInit(net, packaged.card.get("trunk_model_sha", packaged.sha), stages, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glassfinder.face.training.train", description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="resumable work folder")
    parser.add_argument(
        "--shards", type=int, default=DEFAULT_SHARDS, help=f"render shards (default {DEFAULT_SHARDS})"
    )
    parser.add_argument("--workers", type=int, default=2, help="render processes (default 2)")
    parser.add_argument(
        "--stage", choices=("render", "all"), default="all", help="stop after rendering, or go on"
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: FitConfig's)")
    parser.add_argument(
        "--no-photos",
        action="store_true",
        help="skip stage 2 (adapting to Grace Hopper's photo): renders of procedural heads only",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: the package's glassfinder/models/"
    )
    parser.add_argument(
        "--init",
        choices=("imagenet", "packaged"),
        default="imagenet",
        help="imagenet: all stages from ImageNet; packaged: keep the packaged model's trunk "
        "(stages 1-2) and refit only the presence decision (stage 3)",
    )
    add_portraits_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    non_face_photos()  # the last step needs scikit-image: fail now, not after an hour of training
    portraits = split_portraits_from(args.portraits)
    render_all(args.work, args.shards, args.workers)
    if args.stage == "render":
        return 0
    cfg = FitConfig() if args.epochs is None else replace(FitConfig(), epochs=args.epochs)
    assets = training_assets(args.work)
    photos, init = None, None
    if args.init == "packaged":
        init = packaged_trunk()
    elif not args.no_photos:
        photos = load_or_render_photo_samples(args.work, assets, cfg.photo_worn, cfg.photo_bare_copies)
    report: dict[str, Any] = train_and_package(
        args.work, args.shards, photos, assets, cfg, out_dir=args.out_dir, init=init, portraits=portraits
    )
    report["verifier"] = fit_and_package(
        args.work, min(VERIFIER_SHARDS, args.shards), args.out_dir, portraits
    )
    report["portraits_test"] = measure_test_split(portraits["test"], args.out_dir)
    print(json.dumps(report, indent=2))
    return 0


def measure_test_split(test: list, models_dir: Path | None) -> dict[str, Any]:
    """The finished model (verifier and threshold included) on the portraits' test split; written
    into its card as `evaluation.portraits.test`."""
    packaged_analyser.cache_clear()
    _, analyser = packaged_analyser(models_dir)
    views = portrait_views(analyser, test, PORTRAIT_DAMAGED_VIEWS, PresenceConfig().seed + 1)
    figures = portrait_figures(
        views, analyser.threshold, analyser.verifier.threshold if analyser.verifier else 0.0
    )
    path = card_path(MODEL_NAME, models_dir)
    card = json.loads(path.read_text())
    card["evaluation"].setdefault("portraits", {})["test"] = figures
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
