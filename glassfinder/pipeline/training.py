"""Training data on demand: a render spec from run params, and training + publishing a model on it.

The spec's hash names the image shards, so asking twice for the same spec renders nothing the
second time; a new model is published under its sha and its name's CURRENT moves, which the
DAG announces as an Asset event that starts a re-index with the new model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from glassfinder.errors import GlassFinderError, ParamError, RetryableError
from glassfinder.pipeline.artefacts import RunPlan
from glassfinder.pipeline.config import PipelineConfig, check_params, param_specs, work_dir
from glassfinder.render.spec import RenderSpec, load_spec
from glassfinder.store import open_store
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)

#: Params that are RenderSpec fields of the same name.
SPEC_PARAMS = (
    "image_px",
    "views_per_asset",
    "face_first",
    "face_count",
    "yaw_deg",
    "pitch_deg",
    "roll_deg",
    "lens_palette",
    "seed",
)


def training_spec(params: Mapping[str, Any]) -> RenderSpec:
    """The render spec the params describe: the catalogue preset, with the params' fields over it."""
    specs = param_specs("training")
    fields = asdict(load_spec("catalog"))
    for name in SPEC_PARAMS:
        if name in params:
            fields[name] = params[name]
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise ParamError(f"unknown param(s) {unknown}; known: {sorted(specs)}")
    check_params(params, specs)
    overrides = params.get("spec_overrides") or {}
    clash = sorted(set(overrides) & set(SPEC_PARAMS))
    if clash:
        raise ParamError(f"param 'spec_overrides' repeats {clash}: set them as params of their own")
    fields.update(overrides)

    try:
        return RenderSpec.from_json(json.dumps(fields), where="training render spec (run params)")
    except (GlassFinderError, TypeError, ValueError) as exc:
        raise ParamError(f"training render spec from the run params is invalid: {exc}") from exc


def train_config(params: Mapping[str, Any], spec_hash: str, store: ObjectStore) -> Any:
    """The training run the params ask for; by default it fine-tunes the packaged model."""
    from glassfinder.embed.train import TrainConfig, resolve_init  # torch: kept off the DAG-parse path

    defaults = param_specs("training")

    def get(name: str) -> Any:
        return params.get(name, defaults[name]["default"])

    try:
        model, init_from = resolve_init(store, str(get("init")), None)
        return TrainConfig(
            spec_hashes=(spec_hash,),
            epochs=int(get("epochs")),
            batch_size=int(get("batch_size")),
            lr=float(get("lr")),
            seed=int(get("train_seed")),
            model=model,
            init_from=init_from,
            imprint=bool(get("imprint")),
        )
    except RetryableError:
        raise  # a store outage while resolving the starting model: Airflow's retries are for it
    except GlassFinderError as exc:
        raise ParamError(f"training params: {exc.speak('dag')}") from exc


def train_and_register(cfg: PipelineConfig, params: Mapping[str, Any], plan: RunPlan) -> dict[str, Any]:
    """Train on the plan's training shards, publish the model as cfg.model and move its CURRENT."""
    from glassfinder.embed.train import train_and_publish  # torch: kept off the DAG-parse path

    store, name = open_store(cfg.store), cfg.model
    (spec_hash,) = plan.render_specs
    config = train_config(params, spec_hash, store)
    # Checkpoints per (spec, config): a retried task resumes where the failed attempt stopped.
    run_key = hashlib.sha256(config.to_json().encode()).hexdigest()[:12]
    result, sha = train_and_publish(
        store,
        config,
        name=name,
        work_dir=work_dir() / "train" / f"{spec_hash}-{run_key}",
        resume=True,
        device=cfg.device,
    )
    log.info(
        "published model %s@%s (best epoch %d of %d, validation %s) in %.0f s",
        name,
        sha,
        result.best_epoch,
        config.epochs,
        result.best_val,
        result.seconds,
    )
    return {
        "model": f"{name}@{sha}",
        "model_sha": sha,
        "spec_hash": spec_hash,
        "best_epoch": result.best_epoch,
        "validation": result.best_val,
        "train_products": result.train_products,
        "train_views": result.train_views,
        "seconds": round(result.seconds, 1),
    }
