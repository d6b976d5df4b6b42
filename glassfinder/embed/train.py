"""Metric-learning training from image shards, with checkpoints, resume and a seeded data order.

Products are the classes. Batches hold m views of each of batch_size/m products
(pytorch-metric-learning's MPerClassSampler), and a margin loss from the same library pulls a
product's views together and pushes other products (including its own colourways) apart.
Model selection uses the validation products, which training never sees, so the chosen epoch
is the one that generalises to new products.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import torch
from pytorch_metric_learning import losses
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from tqdm import tqdm

from glassfinder import layout, settings
from glassfinder.embed.align import CropGeometry, align_matrix
from glassfinder.embed.augment import AugmentConfig, augment_crop
from glassfinder.embed.composite import bank_faces
from glassfinder.embed.data import LOOSE_FACTOR, ViewSet, load_views
from glassfinder.embed.infer import Embedder
from glassfinder.embed.model import (
    IMAGENET_ARCHITECTURES,
    EmbeddingNet,
    ModelConfig,
    build_model,
    mobilenet_config,
    pick_device,
    to_input,
)
from glassfinder.embed.registry import load_model, publish_model
from glassfinder.errors import BadInputError, ObjectNotFoundError
from glassfinder.nets.packaged import read_packaged
from glassfinder.render.spec import find_saved_spec
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)

LOSSES = ("arcface", "subcenter", "proxyanchor")
#: Losses with exactly one proxy per class (sub-centre ArcFace has several).
IMPRINTABLE_LOSSES = ("arcface", "proxyanchor")
CHECKPOINT = "last.pt"
BEST = "best.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; recorded in checkpoints and the model card."""

    spec_hashes: tuple[str, ...]
    # ArcFace at margin 10 deg / scale 16 learnt fastest of the set-ups compared on 600 products
    # (bench/embed_eval_bench.py): the library default (28.6 deg / 64) barely moved in 8 epochs.
    loss: str = "arcface"
    margin: float | None = 10.0  # None: the loss's default (degrees for ArcFace, 0..1 for Proxy Anchor)
    scale: float | None = 16.0  # ArcFace scale / Proxy Anchor alpha
    epochs: int = 20
    # Fine-tuning the ImageNet MobileNetV2: lr 1e-3 at batch 64 (NOTES-stack.md: 8 epochs on 400
    # products, open-set top-1 0.37 -> 0.47 with the wide 256x128 band). The small CNN trained
    # from scratch wanted 4e-3 at 128.
    batch_size: int = 64
    m_per_class: int = 4
    lr: float = 1e-3
    loss_lr: float = 2e-2
    weight_decay: float = 5e-4
    seed: int = 0
    model: ModelConfig = field(default_factory=mobilenet_config)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    amp: bool = True
    #: '' starts from ImageNet (MobileNetV2) or the seed (the small CNN); 'NAME@SHA' fine-tunes a
    #: published or packaged model, whose config must equal `model`.
    init_from: str = ""
    # Keeping the ImageNet prior (#33), both off by default: the trunk's learning rate as a share
    # of `lr` (0 freezes its weights; its batch norms' statistics still follow the data), and the
    # weight of a distillation term that holds the trunk's feature map close to the frozen
    # ImageNet trunk's (1 - cosine per location, averaged), so fine-tuning on renders cannot
    # forget what photos of real things look like.
    trunk_lr_scale: float = 1.0
    distill_weight: float = 0.0
    #: Glasses-layer render specs (RenderSpec.glasses_layer) whose train views join the training
    #: set, each put onto a face of its photo bank drawn anew every time (embed/composite.py).
    layer_specs: tuple[str, ...] = ()
    #: Start the loss's class proxies at each training product's mean embedding under the initial
    #: model (weight imprinting) instead of at random: see `imprint_proxies`.
    imprint: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise BadInputError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not self.spec_hashes:
            raise BadInputError("training needs at least one render spec hash")
        if self.batch_size % self.m_per_class:
            raise BadInputError(
                f"batch_size ({self.batch_size}) must be a multiple of m_per_class ({self.m_per_class})"
            )
        if self.epochs < 1:
            raise BadInputError(f"epochs must be >= 1, got {self.epochs}")
        object.__setattr__(self, "layer_specs", tuple(self.layer_specs))  # a list records as ()'s twin
        if not 0.0 <= self.trunk_lr_scale <= 1.0:
            raise BadInputError(f"trunk_lr_scale must be in [0, 1], got {self.trunk_lr_scale}")
        if self.imprint and self.loss not in IMPRINTABLE_LOSSES:
            raise BadInputError(
                f"imprint needs one proxy per product, which {self.loss!r} does not have: use one of "
                f"{IMPRINTABLE_LOSSES}"
            )
        if self.distill_weight < 0.0:
            raise BadInputError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.distill_weight and self.model.architecture not in IMAGENET_ARCHITECTURES:
            raise BadInputError(
                f"distill_weight needs an ImageNet backbone ({IMAGENET_ARCHITECTURES}) to distil from, "
                f"got {self.model.architecture!r}"
            )

    def to_json(self) -> str:
        """The config as recorded in checkpoints, cards and pipeline run keys. Fields added after
        runs were recorded are left out at their defaults, so those records still match."""
        raw = asdict(self)
        defaults = {f.name: f.default for f in fields(self)}
        for name in _LATER_FIELDS:
            if raw[name] == defaults[name]:
                del raw[name]
        return json.dumps(raw, sort_keys=True)


#: TrainConfig fields that came after runs were recorded: left out while at their defaults.
_LATER_FIELDS = ("trunk_lr_scale", "distill_weight", "layer_specs", "imprint")


@dataclass
class TrainResult:
    model: EmbeddingNet
    config: TrainConfig
    history: list[dict[str, float]]
    best_epoch: int
    best_val: dict[str, float]
    train_products: int
    val_products: int
    train_views: int
    seconds: float

    def card(self) -> dict[str, Any]:
        """What the model card says about how this model was made."""
        return {
            "training": json.loads(self.config.to_json()),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "validation": self.best_val,
            "train_products": self.train_products,
            "val_products": self.val_products,
            "train_views": self.train_views,
            "train_seconds": round(self.seconds, 1),
            "input": {
                "crop": asdict(self.config.model.crop),
                "normalisation": "rgb/255, ImageNet mean/std",
                "alignment": "similarity transform from the two eye centres (glassfinder.embed.align)",
            },
            "torch": torch.__version__,
        }


def make_loss(
    name: str, num_classes: int, dim: int, *, margin: float | None = None, scale: float | None = None
) -> torch.nn.Module:
    if name == "arcface":
        return losses.ArcFaceLoss(num_classes, dim, margin=margin or 28.6, scale=scale or 32)
    if name == "subcenter":
        return losses.SubCenterArcFaceLoss(
            num_classes=num_classes,
            embedding_size=dim,
            margin=margin or 28.6,
            scale=scale or 32,
            sub_centers=3,
        )
    if name == "proxyanchor":
        return losses.ProxyAnchorLoss(num_classes, dim, margin=margin or 0.1, alpha=scale or 32)
    raise BadInputError(f"loss must be one of {LOSSES}, got {name!r}")


def canonical_crops(views: ViewSet, geometry: CropGeometry, rows: np.ndarray | None = None) -> np.ndarray:
    """The un-jittered model-input crops of loosely aligned views (of `rows` only, if given: a
    large set is then warped a batch at a time instead of all at once)."""
    matrix = align_matrix(views.geometry.eyes(), geometry)
    crops = views.crops if rows is None else views.crops[rows]
    return np.stack(
        [cv2.warpAffine(c, matrix, (geometry.width, geometry.height), flags=cv2.INTER_LINEAR) for c in crops]
    )


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """precision@1 and MAP@R of every view against the others (leave-one-out)."""
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    acc = calc.get_accuracy(embeddings, labels, embeddings, labels, ref_includes_query=True)
    return {k: round(float(v), 4) for k, v in acc.items()}


def _batches(
    views: ViewSet,
    labels: np.ndarray,
    config: TrainConfig,
    epoch: int,
    steps: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of augmented batches, prepared one ahead in a thread (cv2 and numpy drop the GIL)."""
    # The sampler draws from the library's module-level numpy RandomState: seed it per epoch so
    # a resumed run sees exactly the batches an uninterrupted one would.
    common_functions.NUMPY_RANDOM = np.random.RandomState([config.seed, epoch])
    sampler = MPerClassSampler(
        labels,
        config.m_per_class,
        batch_size=config.batch_size,
        length_before_new_iter=steps * config.batch_size,
    )
    order = np.fromiter(iter(sampler), dtype=np.int64)
    geometry = config.model.crop

    def make(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = order[step * config.batch_size : (step + 1) * config.batch_size]
        rng = np.random.default_rng([config.seed, epoch, step])
        crops = np.stack(
            [augment_crop(views.view(i, rng), views.geometry, geometry, rng, config.augment) for i in idx]
        )
        return to_input(crops), torch.from_numpy(labels[idx])

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(make, 0)
        for step in range(steps):
            batch = pending.result()
            if step + 1 < steps:
                pending = pool.submit(make, step + 1)
            yield batch


def _save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_model(
    store: ObjectStore,
    config: TrainConfig,
    *,
    work_dir: Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = False,
    views: tuple[ViewSet, ViewSet] | None = None,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train on the 'train' products of the given render specs; select the epoch on 'val'.

    work_dir holds `last.pt` (everything needed to resume) and `best.pt` (the selected weights).
    views: pre-loaded (train, val) loose view sets, for callers that train several times.
    stop_after_epochs: end this call after so many epochs (a time-boxed task); resume later.
    """
    start = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = work_dir / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise BadInputError(
            f"{ckpt_path} exists from an earlier run: pass {{option:resume}} to continue it "
            "or use {option:work_dir}"
        )
    dev = pick_device(device)
    torch.manual_seed(config.seed)
    train_views, val_views = views if views is not None else load_training_views(store, config, progress)
    labels, classes = train_views.labels()
    _check_batch_fits(len(classes), config)
    steps = max(1, len(train_views) // config.batch_size)
    parts = _training_parts(store, config, len(classes), steps, dev)
    if ckpt_path.exists():
        run = _resume(ckpt_path, parts, config, dev)
    else:
        run = _RunState()
        if config.imprint:
            imprint_proxies(parts, train_views, labels, config, dev, progress)
    val = _validation_set(val_views, config.model.crop)
    last_epoch = config.epochs
    if stop_after_epochs is not None:
        last_epoch = min(last_epoch, run.first_epoch + stop_after_epochs - 1)
    for epoch in range(run.first_epoch, last_epoch + 1):
        row = _train_epoch(parts, train_views, labels, config, epoch, steps, dev, progress)
        score = _validate(parts.model, row, val, config, epoch, dev)
        run.history.append(row)
        log.info("epoch %d/%d %s", epoch, config.epochs, json.dumps(row))
        _save_epoch(parts, run, config, epoch, row, score, work_dir)
    final = EmbeddingNet(config.model)
    final.load_state_dict(torch.load(work_dir / BEST, map_location="cpu", weights_only=True))
    return TrainResult(
        model=final.eval(),
        config=config,
        history=run.history,
        best_epoch=int(run.best["epoch"]),
        best_val=dict(run.best["val"]),
        train_products=len(classes),
        val_products=len(set(val_views.product_ids.tolist())) if len(val_views) else 0,
        train_views=len(train_views),
        seconds=time.perf_counter() - start,
    )


def _check_batch_fits(products: int, config: TrainConfig) -> None:
    """A batch holds m_per_class views of distinct products: too few products cannot fill one."""
    if products * config.m_per_class < config.batch_size:
        raise BadInputError(
            f"{products} training products x m_per_class {config.m_per_class} is fewer than batch_size "
            f"{config.batch_size}: lower {{option:batch_size}} or render more products"
        )


@dataclass
class _TrainingParts:
    """What a training step updates; all but the scaler and the teacher are saved in every
    checkpoint (the teacher is ImageNet's trunk, frozen, rebuilt the same every time)."""

    model: EmbeddingNet
    loss_fn: torch.nn.Module
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    scaler: torch.amp.GradScaler
    teacher: EmbeddingNet | None = None
    distill_weight: float = 0.0


def _training_parts(
    store: ObjectStore, config: TrainConfig, classes: int, steps: int, dev: torch.device
) -> _TrainingParts:
    """The model, loss, optimiser and schedule of a fresh run.

    The model is built before the loss: both draw their initial weights from torch's generator,
    seeded once by the caller, so this order is part of what makes a seed reproducible.
    """
    model = initial_model(store, config).to(dev)
    loss_fn = make_loss(config.loss, classes, config.model.dim, margin=config.margin, scale=config.scale)
    loss_fn = loss_fn.to(dev)
    groups, max_lr = _parameter_groups(model, loss_fn, config)
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=config.epochs * steps, pct_start=0.15
    )
    scaler = torch.amp.GradScaler(dev.type, enabled=config.amp and dev.type == "cuda")
    teacher = None
    if config.distill_weight:
        teacher = build_model(config.model, seed=config.seed).to(dev).eval().requires_grad_(False)
    return _TrainingParts(model, loss_fn, optimizer, scheduler, scaler, teacher, config.distill_weight)


def _parameter_groups(
    model: EmbeddingNet, loss_fn: torch.nn.Module, config: TrainConfig
) -> tuple[list[dict[str, Any]], list[float]]:
    """The optimiser's groups and their peak learning rates. The trunk gets its own group only when
    its rate differs, so checkpoints of runs made before the option still resume."""
    net: list[dict[str, Any]] = [{"params": model.parameters(), "lr": config.lr}]
    if config.trunk_lr_scale != 1.0:
        trunk_lr = config.lr * config.trunk_lr_scale
        net = [
            {"params": model.trunk_parameters(), "lr": trunk_lr},
            {"params": model.head_parameters(), "lr": config.lr},
        ]
    for group in net:
        group["weight_decay"] = config.weight_decay
    groups = [*net, {"params": loss_fn.parameters(), "lr": config.loss_lr, "weight_decay": 0.0}]
    return groups, [float(g["lr"]) for g in groups]


@dataclass
class _RunState:
    """Where a run stands: the epochs done, the best one so far, and the next one to train."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "score": -1.0, "val": {}})
    first_epoch: int = 1


def _resume(ckpt_path: Path, parts: _TrainingParts, config: TrainConfig, dev: torch.device) -> _RunState:
    """Load a checkpoint into `parts`; only the config that made it may continue it."""
    ckpt = torch.load(ckpt_path, map_location=dev, weights_only=True)
    if ckpt["config"] != config.to_json():
        raise BadInputError(
            f"{ckpt_path} was made with a different training config; resume needs the same one "
            f"(checkpoint: {ckpt['config']})"
        )
    parts.model.load_state_dict(ckpt["model"])
    parts.loss_fn.load_state_dict(ckpt["loss"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    run = _RunState(
        history=json.loads(ckpt["history"]), best=json.loads(ckpt["best"]), first_epoch=int(ckpt["epoch"]) + 1
    )
    log.info("resuming %s at epoch %d of %d", ckpt_path, run.first_epoch, config.epochs)
    return run


def imprint_proxies(
    parts: _TrainingParts,
    views: ViewSet,
    labels: np.ndarray,
    config: TrainConfig,
    dev: torch.device,
    progress: bool = False,
) -> None:
    """Set each product's proxy to the direction of its views' mean embedding under the model
    training starts from, keeping the proxy's length (the optimiser's step scale).

    A fine-tune's new loss starts with random proxies, and its first steps pull the network
    towards them: fine-tuning the shipped model again cost validation MAP@R 0.930 -> 0.876 in its
    first epoch, and more epochs only won it back. Imprinted proxies start where the model
    already is, so its steps go to what the new data teaches. Glasses layers are left out: they
    need a face drawn, and the whole views already give every product a mean.
    """
    weight = proxy_matrix(parts.loss_fn)
    rows = np.arange(len(views)) if views.layers is None else np.flatnonzero(views.layers.row_layer < 0)
    embedder = Embedder(parts.model, device=str(dev), amp=config.amp)
    sums = np.zeros((weight.shape[0], config.model.dim), dtype=np.float64)
    chunks = range(0, len(rows), embedder.batch_size)
    for start in tqdm(chunks, unit="batch", desc="imprinting proxies", leave=False, disable=not progress):
        idx = rows[start : start + embedder.batch_size]
        np.add.at(sums, labels[idx], embedder.embed(canonical_crops(views, config.model.crop, idx)))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    seen = norms[:, 0] > 0  # a product with only layer views keeps its random proxy
    with torch.no_grad():
        keep = torch.from_numpy(seen).to(weight.device)
        means = torch.from_numpy((sums[seen] / norms[seen]).astype(np.float32)).to(weight.device)
        weight[keep] = means * weight[keep].norm(dim=1, keepdim=True)
    log.info("imprinted %d of %d proxies from %d views", int(seen.sum()), len(seen), len(rows))


def proxy_matrix(loss_fn: torch.nn.Module) -> torch.Tensor:
    """The loss's proxies as a (classes, dim) view that writes through to its parameter."""
    if isinstance(loss_fn, losses.SubCenterArcFaceLoss):
        raise BadInputError("imprint: sub-centre ArcFace has several proxies per class")
    if isinstance(loss_fn, losses.ArcFaceLoss):
        return loss_fn.W.data.t()  # the library keeps them as (dim, classes) columns
    if isinstance(loss_fn, losses.ProxyAnchorLoss):
        return loss_fn.proxies.data
    raise BadInputError(f"imprint: {type(loss_fn).__name__} has no one-proxy-per-class matrix")


def _validation_set(val_views: ViewSet, geometry: CropGeometry) -> tuple[np.ndarray, np.ndarray] | None:
    """(canonical crops, labels) of the validation views, or None when there are none."""
    if not len(val_views):
        return None
    val_labels = val_views.labels()[0]
    return canonical_crops(val_views, geometry), val_labels


def _train_epoch(
    parts: _TrainingParts,
    views: ViewSet,
    labels: np.ndarray,
    config: TrainConfig,
    epoch: int,
    steps: int,
    dev: torch.device,
    progress: bool,
) -> dict[str, float]:
    """One pass over the epoch's batches; its history row (loss and speed)."""
    parts.model.train()
    t0 = time.perf_counter()
    total = distill = 0.0
    batches = _batches(views, labels, config, epoch, steps)
    if progress:
        batches = tqdm(batches, total=steps, unit="batch", desc=f"epoch {epoch}/{config.epochs}", leave=False)
    for x, y in batches:
        metric_loss, distill_loss = _train_step(parts, x, y, dev)
        total += metric_loss
        distill += distill_loss
    seconds = time.perf_counter() - t0
    row = {
        "epoch": epoch,
        "loss": round(total / steps, 4),
        "train_img_per_s": round(steps * config.batch_size / seconds, 1),
        "seconds": round(seconds, 1),
    }
    if parts.teacher is not None:
        row["distill_loss"] = round(distill / steps, 4)
    return row


def _train_step(
    parts: _TrainingParts, x: torch.Tensor, y: torch.Tensor, dev: torch.device
) -> tuple[float, float]:
    """One optimiser step on a batch (the forward pass in float16 where AMP is on); its metric loss
    and its distillation loss (0 without a teacher)."""
    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
    with torch.autocast(dev.type, dtype=torch.float16, enabled=parts.scaler.is_enabled()):
        features = parts.model.backbone(x)
        emb = parts.model.embed_features(features)
    metric_loss = parts.loss_fn(emb.float(), y)
    loss, distill_loss = metric_loss, torch.zeros(())
    if parts.teacher is not None:
        amp = parts.scaler.is_enabled()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            target = parts.teacher.backbone(x)
        distill_loss = feature_distance(features, target)
        loss = metric_loss + parts.distill_weight * distill_loss
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    return float(metric_loss.detach()), float(distill_loss.detach())


def feature_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine between two (n, c, h, w) feature maps at each location, averaged: 0 where the
    student's trunk still sees what ImageNet's does, whatever the scale of its activations."""
    return (1.0 - torch.nn.functional.cosine_similarity(student.float(), teacher.float(), dim=1)).mean()


def _validate(
    model: EmbeddingNet,
    row: dict[str, float],
    val: tuple[np.ndarray, np.ndarray] | None,
    config: TrainConfig,
    epoch: int,
    dev: torch.device,
) -> float:
    """The epoch's selection score (validation MAP@R), adding the validation figures to `row`."""
    if val is None:
        return float(epoch)  # no validation products: the last epoch is the choice
    val_crops, val_labels = val
    emb_val = Embedder(model, device=str(dev), amp=config.amp).embed(val_crops)
    model.train()
    row.update({f"val_{k}": v for k, v in retrieval_metrics(emb_val, val_labels).items()})
    return row["val_mean_average_precision_at_r"]


def _save_epoch(
    parts: _TrainingParts,
    run: _RunState,
    config: TrainConfig,
    epoch: int,
    row: dict[str, float],
    score: float,
    work_dir: Path,
) -> None:
    """Keep the weights when the epoch is the best so far, then checkpoint the whole run."""
    if score > run.best["score"]:
        run.best = {
            "epoch": epoch,
            "score": score,
            "val": {k: v for k, v in row.items() if k.startswith("val_")},
        }
        _save({k: v.detach().cpu() for k, v in parts.model.state_dict().items()}, work_dir / BEST)
    _save(
        {
            "epoch": epoch,
            "config": config.to_json(),
            "model": parts.model.state_dict(),
            "loss": parts.loss_fn.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "history": json.dumps(run.history),
            "best": json.dumps(run.best),
        },
        work_dir / CHECKPOINT,
    )


def initial_model(store: ObjectStore, config: TrainConfig) -> EmbeddingNet:
    """The network training starts from: ImageNet/seeded (init_from '') or a model's weights."""
    if not config.init_from:
        return build_model(config.model, seed=config.seed)
    loaded = load_model(store, config.init_from)
    if loaded.model.config != config.model:
        raise BadInputError(
            f"init_from {config.init_from}: its config {loaded.model.config} differs from the training "
            f"config's model {config.model}; fine-tuning keeps the architecture, dim and crop"
        )
    model = build_model(config.model, seed=config.seed, pretrained=False)
    model.load_state_dict(loaded.model.state_dict())
    return model


#: `glassfinder train --init` choices besides a model reference.
INIT_DEFAULT, INIT_IMAGENET, INIT_SCRATCH = "default", "imagenet", "scratch"


def resolve_init(store: ObjectStore, init: str, dim: int | None) -> tuple[ModelConfig, str]:
    """(model config, TrainConfig.init_from) for a `train --init` choice.

    'default': fine-tune the packaged default model (its architecture, dim and crop);
    'imagenet': a fresh MobileNetV2 from ImageNet; 'scratch': the small CNN from random weights;
    anything else: NAME or NAME@SHA of a published model to fine-tune. `dim` only applies to a
    fresh network: a fine-tuned one keeps its own.
    """
    if init in (INIT_IMAGENET, INIT_SCRATCH):
        dim = 128 if dim is None else dim
        return (mobilenet_config(dim=dim) if init == INIT_IMAGENET else ModelConfig(dim=dim)), ""
    if init == INIT_DEFAULT:
        packaged = read_packaged(settings.DEFAULT_MODEL_NAME)
        ref = f"{packaged.name}@{packaged.sha}"
    else:
        ref = init
    loaded = load_model(store, ref)
    if dim is not None and dim != loaded.model.config.dim:
        raise BadInputError(
            f"--dim {dim} cannot apply when fine-tuning {loaded.name}@{loaded.sha} (dim "
            f"{loaded.model.config.dim}): use --init imagenet or --init scratch for a new dimension"
        )
    return loaded.model.config, f"{loaded.name}@{loaded.sha}"


def load_training_views(
    store: ObjectStore, config: TrainConfig, progress: bool = False
) -> tuple[ViewSet, ViewSet]:
    """(train, val) loose view sets of every spec in the config."""
    loose = config.model.crop.widened(LOOSE_FACTOR)
    sets = [
        load_views(store, h, loose, splits=("train", "val"), progress=progress) for h in config.spec_hashes
    ]
    meta = pa.concat_tables([s.meta for s in sets])
    views = ViewSet(np.concatenate([s.crops for s in sets]), meta, loose)
    del sets  # the crops live once in `views`, then once in the splits: not three times over
    split = np.asarray(meta.column("split").to_pylist())
    train, val = views.subset(split == "train"), views.subset(split == "val")
    del views
    if not len(train):
        raise BadInputError(f"render specs {list(config.spec_hashes)} have no 'train' split views")
    if config.layer_specs:
        train = _with_layers(store, train, set(val.product_ids.tolist()), config.layer_specs, progress)
    return train, val


def _with_layers(
    store: ObjectStore, train: ViewSet, val_products: set[str], layer_specs: Sequence[str], progress: bool
) -> ViewSet:
    """The train views plus the glasses layers of `layer_specs` (train split; validation stays
    whole renders), with the faces of the layer specs' photo banks to draw them onto."""
    loose = train.geometry
    sets, faces = [], []
    for spec_hash in layer_specs:
        spec = find_saved_spec(store, spec_hash)
        if spec is None:
            raise BadInputError(f"layer_specs: no render spec {spec_hash} under {store.uri}: render it first")
        if not spec.glasses_layer:
            raise BadInputError(f"layer_specs: render spec {spec_hash} is not a glasses-layer spec")
        layer_set = load_views(store, spec_hash, loose, splits=("train",), progress=progress, layers=True)
        leaked = val_products & set(layer_set.product_ids.tolist())
        if leaked:
            raise BadInputError(
                f"layer_specs: render spec {spec_hash} splits products otherwise ({len(leaked)} of its train "
                "products are validation products of spec_hashes): give it their seed and split_fractions"
            )
        sets.append(layer_set)
        faces.append(bank_faces(store, spec.face_source, loose))
    layers = ViewSet(np.concatenate([s.crops for s in sets]), pa.concat_tables([s.meta for s in sets]), loose)
    return train.with_layers(layers, np.concatenate(faces))


def parse_specs(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(s.strip() for s in items if s.strip())


def train_and_publish(
    store: ObjectStore,
    config: TrainConfig,
    *,
    name: str,
    work_dir: Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = False,
    publish: bool = True,
) -> tuple[TrainResult, str | None]:
    """Train, then publish weights + card and move the name's CURRENT (unless publish=False)."""
    layout.model_current_key(name)  # reject a bad name before hours of training, not after
    result = train_model(store, config, work_dir=work_dir, resume=resume, device=device, progress=progress)
    if not publish:
        return result, None
    card = result.card()
    card["render_specs"] = {}
    for spec_hash in config.spec_hashes:
        try:  # the spec's saved text as it is (one store call; a spec never saved is left out)
            card["render_specs"][spec_hash] = json.loads(store.get(layout.render_spec_key(spec_hash)))
        except ObjectNotFoundError:
            continue
    sha = publish_model(store, name, result.model, card)
    return result, sha
