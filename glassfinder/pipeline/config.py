"""A pipeline run's settings: what the DAG params (or the demo) decide, parsed and checked once.

The same definitions give the DAGs their typed, documented Params (`param_specs`) and the library
its validated `PipelineConfig` (`PipelineConfig.from_params`), so a default or a bound is written
once. Params arrive as plain JSON; anything wrong is reported naming the param.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from glassfinder import layout, settings
from glassfinder.errors import BadInputError, GlassFinderError, ParamError, RetryableError
from glassfinder.index.versions import GateConfig
from glassfinder.render.spec import RenderSpec, load_spec

_NAME_PATTERN = layout.NAME_PATTERN
#: Assets per mapped render/embed task, at least; raised when the catalogue would need more
#: than `max_batches` tasks.
DEFAULT_ASSETS_PER_BATCH = 32
#: Mapped tasks per stage, at most (Airflow refuses more than core.max_map_length, 1024 by default).
DEFAULT_MAX_BATCHES = 256


#: Retries of every task: a store outage or a lost worker is retried with growing pauses; errors
#: another attempt cannot fix fail at once (glassfinder.pipeline.tasks). The first pause is the
#: deployment's own setting (core.default_task_retry_delay, settings.DEFAULT_TASK_RETRY_DELAY_S),
#: so an operator tunes it in airflow.cfg without touching the DAGs.
TASK_DEFAULTS: dict[str, Any] = {
    "owner": "glassfinder",
    "retries": 2,
    "retry_exponential_backoff": 4.0,
    "max_retry_delay": timedelta(minutes=30),
}


def _common_params() -> dict[str, dict[str, Any]]:
    return {**_location_params(), **_batching_params(), **_gate_params()}


def _location_params() -> dict[str, dict[str, Any]]:
    """Where a run reads and writes: the store, the model, the index and the render specs."""
    store = settings.store_uri()
    return {
        "store": {
            "default": store,
            "type": "string",
            "minLength": 1,
            "title": "Object store",
            "description": "Store URI for every artefact: s3://bucket/prefix, file:///path or a path.",
        },
        "model": {
            "default": settings.model_name(),
            "type": "string",
            "pattern": _NAME_PATTERN,
            "title": "Embedding model",
            "description": "Model name; its CURRENT (models/<name>/CURRENT) is resolved once per run.",
        },
        "index": {
            "default": settings.index_name(),
            "type": "string",
            "pattern": _NAME_PATTERN,
            "title": "Index name",
            "description": "The index to publish (indexes/<name>/).",
        },
        "catalog_spec": {
            "default": settings.catalog_spec(),
            "type": "string",
            "minLength": 1,
            "title": "Catalogue render spec",
            "description": "Preset (catalog, queries, default), inline JSON, a JSON file or a store URI.",
        },
        "query_spec": {
            "default": settings.query_spec(),
            "type": ["null", "string"],
            "title": "Evaluation render spec",
            "description": "Held-out query views every new version is evaluated on (null: no evaluation).",
        },
    }


def _batching_params() -> dict[str, dict[str, Any]]:
    """How a run's work is cut into mapped tasks, and where those tasks compute."""
    return {
        "assets_per_batch": {
            "default": DEFAULT_ASSETS_PER_BATCH,
            "type": "integer",
            "minimum": 1,
            "maximum": 100_000,
            "title": "Assets per batch",
            "description": "Assets per mapped render/embed task (raised to stay within max_batches).",
        },
        "max_batches": {
            "default": DEFAULT_MAX_BATCHES,
            "type": "integer",
            "minimum": 1,
            "maximum": 1024,
            "title": "Most batches",
            "description": "Mapped tasks per stage at most; never above core.max_map_length.",
        },
        "render_workers": {
            "default": None,
            "type": ["null", "integer"],
            "minimum": 1,
            "title": "Render processes",
            "description": "Render processes per task (null: every core of the worker).",
        },
        "device": {
            "default": None,
            "type": ["null", "string"],
            "enum": [None, "cpu", "cuda"],
            "title": "Torch device",
            "description": "Device for embedding and training (null: cuda when present).",
        },
    }


def _gate_params() -> dict[str, dict[str, Any]]:
    """The quality gate a new index version must pass, and the operator's way past it."""
    return {
        "max_top1_drop": {
            "default": GateConfig().max_top1_drop,
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "title": "Gate: largest top-1 drop",
            "description": "A new version whose top-1 falls further below CURRENT's is not promoted.",
        },
        "max_top10_drop": {
            "default": GateConfig().max_top10_drop,
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "title": "Gate: largest top-10 drop",
            "description": "A new version whose top-10 falls further below CURRENT's is not promoted.",
        },
        "force_reason": {
            "default": None,
            "type": ["null", "string"],
            "title": "Override the gate because",
            "description": "Promote even if the quality gate refuses; the reason is recorded.",
        },
    }


def _catalog_params() -> dict[str, dict[str, Any]]:
    return {
        "source_manifest": {
            "default": None,
            "type": ["null", "string"],
            "title": "Source manifest",
            "description": "URI of the shop's full catalogue export (Parquet, CSV or JSON) to ingest "
            f"(null: $GLASSFINDER_SOURCE_MANIFEST_URI, else {settings.DEFAULT_SOURCE_MANIFEST_KEY} "
            "in the store).",
        },
    }


def _onboarding_params() -> dict[str, dict[str, Any]]:
    return {
        "products": {
            "default": [],
            "type": "array",
            "items": {
                "type": "object",
                "required": ["product_id", "asset_uri"],
                "properties": {"product_id": {"type": "string"}, "asset_uri": {"type": "string"}},
            },
            "title": "New products",
            "description": "Manifest rows of the products to add or replace; relative asset_uri "
            "values resolve against the store. Empty with no manifest_delta: take the changes of the "
            "source manifest since the catalogue was last synced.",
        },
        "manifest_delta": {
            "default": None,
            "type": ["null", "string"],
            "title": "Manifest delta",
            "description": "URI of a manifest holding only the new or changed products.",
        },
        "remove_products": {
            "default": [],
            "type": "array",
            "items": {"type": "string"},
            "title": "Products to remove",
            "description": "Product ids to take out of the catalogue and the index.",
        },
    }


def _training_params() -> dict[str, dict[str, Any]]:
    # One load of the catalogue preset gives every render param its default.
    base = load_spec("catalog")
    return {**_view_params(base), **_pose_params(base), **_render_extra_params(base), **_fit_params()}


def _view_params(base: RenderSpec) -> dict[str, dict[str, Any]]:
    """How many try-on images are rendered, how large, and on which faces."""
    return {
        "image_px": {
            "default": base.image_px,
            "type": "integer",
            "minimum": 32,
            "maximum": 2048,
            "title": "Image size (px)",
            "description": "Square render size.",
        },
        "views_per_asset": {
            "default": base.views_per_asset,
            "type": "integer",
            "minimum": 1,
            "maximum": 1000,
            "title": "Views per asset",
            "description": "Try-on images rendered per product.",
        },
        "face_first": {
            "default": base.face_first,
            "type": "integer",
            "minimum": 0,
            "title": "First face",
            "description": "Procedural identities face_first .. face_first + face_count - 1.",
        },
        "face_count": {
            "default": base.face_count,
            "type": "integer",
            "minimum": 1,
            "title": "Faces",
            "description": "Number of face identities to draw from.",
        },
    }


def _pose_params(base: RenderSpec) -> dict[str, dict[str, Any]]:
    """The head pose ranges renders draw from."""
    pair = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    return {
        "yaw_deg": {
            "default": list(base.yaw_deg),
            **pair,
            "title": "Yaw range (deg)",
            "description": "[low, high] head yaw.",
        },
        "pitch_deg": {
            "default": list(base.pitch_deg),
            **pair,
            "title": "Pitch range (deg)",
            "description": "[low, high] head pitch.",
        },
        "roll_deg": {
            "default": list(base.roll_deg),
            **pair,
            "title": "Roll range (deg)",
            "description": "[low, high] head roll.",
        },
    }


def _render_extra_params(base: RenderSpec) -> dict[str, dict[str, Any]]:
    """The rest of the render spec: lens looks, seed, other fields, and how many products."""
    return {
        "lens_palette": {
            "default": [[style, list(rgba)] for style, rgba in base.lens_palette],
            "type": "array",
            "minItems": 1,
            "items": {"type": "array", "minItems": 2, "maxItems": 2},
            "title": "Lens palette",
            "description": "[[style, [r, g, b, opacity]], ...] for optical frames (linear RGB).",
        },
        "seed": {
            "default": base.seed,
            "type": "integer",
            "minimum": 0,
            "title": "Seed",
            "description": "Every random draw of the renders follows from it.",
        },
        "spec_overrides": {
            "default": {},
            "type": "object",
            "title": "Other spec fields",
            "description": 'Any other RenderSpec field, e.g. {"fit_jitter": 1.0}.',
        },
        "limit_products": {
            "default": None,
            "type": ["null", "integer"],
            "minimum": 1,
            "title": "Products",
            "description": "Render only the first N products.",
        },
    }


def _fit_params() -> dict[str, dict[str, Any]]:
    """Whether to train on the renders, and the training run's settings."""
    return {
        "train": {
            "default": False,
            "type": "boolean",
            "title": "Train a model",
            "description": "Train on the new shards, publish the model and move its CURRENT.",
        },
        "init": {
            "default": "default",
            "type": "string",
            "minLength": 1,
            "title": "Start from",
            "description": "'default' fine-tunes the packaged model; 'imagenet' a fresh MobileNetV2; "
            "'scratch' the small CNN; or NAME[@SHA] of a published model.",
        },
        "epochs": {
            "default": 10,
            "type": "integer",
            "minimum": 1,
            "maximum": 1000,
            "title": "Epochs",
            "description": "Training epochs.",
        },
        "batch_size": {
            "default": 64,
            "type": "integer",
            "minimum": 4,
            "title": "Batch size",
            "description": "Training batch (a multiple of 4 views per product).",
        },
        "lr": {
            "default": 1e-3,
            "type": "number",
            "exclusiveMinimum": 0,
            "title": "Learning rate",
            "description": "AdamW learning rate.",
        },
        "train_seed": {
            "default": 0,
            "type": "integer",
            "minimum": 0,
            "title": "Training seed",
            "description": "Seeds initialisation, sampling and augmentation.",
        },
        "imprint": {
            "default": False,
            "type": "boolean",
            "title": "Imprint proxies",
            "description": "Start each product's loss proxy at its views' mean embedding under the "
            "starting model instead of at random (for fine-tunes).",
        },
    }


def param_specs(dag: str) -> dict[str, dict[str, Any]]:
    """JSON-schema Param definitions (default, type, bounds, title, description) of one DAG.

    dag: 'reindex', 'onboarding' or 'training'.
    """
    common = _common_params()
    if dag == "reindex":
        return {**_catalog_params(), **common}
    if dag == "onboarding":
        return {**_onboarding_params(), **_catalog_params(), **common}
    if dag == "training":
        keep = ("store", "model", "device", "assets_per_batch", "max_batches", "render_workers")
        return {**_training_params(), **{k: common[k] for k in keep}}
    raise BadInputError(f"unknown DAG kind {dag!r}: expected reindex, onboarding or training")


def _get(params: Mapping[str, Any], specs: dict[str, dict[str, Any]], name: str) -> Any:
    return params[name] if name in params else specs[name]["default"]


def _spec(name: str, value: Any) -> RenderSpec:
    try:
        return load_spec(value if isinstance(value, str) else json.dumps(value))
    except RetryableError:
        raise
    except GlassFinderError as exc:
        raise ParamError(f"param {name!r}: {exc}") from exc


def check_params(params: Mapping[str, Any], specs: dict[str, dict[str, Any]]) -> None:
    """Check the given params against the very schema the trigger form shows (types, bounds,
    enums), so the bounds are written once: in the Param specs."""
    schema = {
        "type": "object",
        "properties": {
            name: {k: v for k, v in spec.items() if k not in ("title", "description", "default")}
            for name, spec in specs.items()
        },
    }
    errors = sorted(Draft202012Validator(schema).iter_errors(dict(params)), key=lambda e: list(e.path))
    if errors:
        raise ParamError(
            "; ".join(f"param {'.'.join(str(p) for p in e.path)!r}: {e.message}" for e in errors)
        )


def _absolute(uri: str) -> str:
    """A local store path made absolute, so every task and process agrees on it."""
    if "://" in uri:
        return uri.rstrip("/")
    return str(Path(uri).resolve())


@dataclass(frozen=True)
class PipelineConfig:
    store: str
    source_manifest: str
    catalog_spec: RenderSpec
    query_spec: RenderSpec | None
    model: str = settings.DEFAULT_MODEL_NAME
    index: str = settings.DEFAULT_INDEX_NAME
    assets_per_batch: int = DEFAULT_ASSETS_PER_BATCH
    max_batches: int = DEFAULT_MAX_BATCHES
    render_workers: int | None = None
    device: str | None = None
    gate: GateConfig = field(default_factory=GateConfig)
    force_reason: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PipelineConfig:
        specs = {**_catalog_params(), **_common_params()}
        unknown_ok = set(_onboarding_params()) | set(_training_params())
        unknown = sorted(set(params) - set(specs) - unknown_ok)
        if unknown:
            raise ParamError(f"unknown param(s) {unknown}; known: {sorted(specs)}")
        check_params({k: v for k, v in params.items() if k in specs}, specs)
        get = lambda name: _get(params, specs, name)  # noqa: E731
        query = get("query_spec")
        store = get("store")
        store = _absolute(store)
        return cls(
            store=store,
            source_manifest=get("source_manifest") or settings.source_manifest_uri(store),
            catalog_spec=_spec("catalog_spec", get("catalog_spec")),
            query_spec=_spec("query_spec", query) if query else None,
            model=get("model"),
            index=get("index"),
            assets_per_batch=get("assets_per_batch"),
            max_batches=get("max_batches"),
            render_workers=get("render_workers"),
            device=get("device"),
            gate=GateConfig(float(get("max_top1_drop")), float(get("max_top10_drop"))),
            force_reason=get("force_reason") or None,
        )

    @property
    def specs(self) -> list[RenderSpec]:
        """The specs the index needs rendered: the catalogue's, and the evaluation queries'."""
        return [self.catalog_spec] + ([self.query_spec] if self.query_spec else [])


def work_dir() -> Path:
    """Local scratch for training checkpoints (settings.work_dir)."""
    return settings.work_dir()
