"""What one stage of a run hands the next: the pinned catalogue, the embedding target, the plan
and its batches, as dataclasses.

Airflow carries task results as JSON, so each record has `to_json` and a checked `from_json`;
the tasks convert at their edges (glassfinder.pipeline.tasks) and everything between works on
these types. The model travels as name and sha, never as a "name@sha" string to split again,
and the catalogue as the snapshot the catalogue stage pinned, never as the live manifest's URI.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from glassfinder.catalog.snapshot import CatalogSnapshot
from glassfinder.errors import BadInputError


def _get(data: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, dict):
        raise BadInputError(f"{where}: expected an object, got {type(data).__name__}")
    if name not in data:
        raise BadInputError(f"{where}.{name}: missing (a result written by another version of the pipeline?)")
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise BadInputError(f"{where}.{name}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _strings(data: Any, name: str, where: str) -> tuple[str, ...]:
    values = _get(data, name, list, where)
    if not all(isinstance(v, str) for v in values):
        raise BadInputError(f"{where}.{name}: expected a list of strings, got {values!r}")
    return tuple(values)


@dataclass(frozen=True)
class EmbedTarget:
    """The feature shards a run must have: made by model `name` at `sha`, from renders under `spec_hash`."""

    name: str
    sha: str
    spec_hash: str

    @property
    def ref(self) -> str:
        """The model reference the registry loads (pinned: CURRENT moving mid-run changes nothing)."""
        return f"{self.name}@{self.sha}"

    def to_json(self) -> dict[str, Any]:
        return {"model": self.name, "sha": self.sha, "spec_hash": self.spec_hash}

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> EmbedTarget:
        return cls(
            _get(data, "model", str, where),
            _get(data, "sha", str, where),
            _get(data, "spec_hash", str, where),
        )


@dataclass(frozen=True)
class Batch:
    """One mapped task's work: these assets, under the plan's specs, model and catalogue."""

    index: int
    store: str
    catalog: CatalogSnapshot
    render_specs: tuple[str, ...]
    embed: EmbedTarget | None
    render_workers: int | None
    device: str | None
    packshot_spec: str | None
    assets: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.index,
            "store": self.store,
            "catalog": self.catalog.to_json(),
            "render_specs": list(self.render_specs),
            "embed": self.embed.to_json() if self.embed else None,
            "render_workers": self.render_workers,
            "device": self.device,
            "packshot_spec": self.packshot_spec,
            "assets": list(self.assets),
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str = "batch") -> Batch:
        """Checked; keys a stage added on the way (the render figures) are ignored."""
        embed = _get(data, "embed", (dict, type(None)), where)
        workers = _get(data, "render_workers", (int, type(None)), where)
        return cls(
            index=_get(data, "batch", int, where),
            store=_get(data, "store", str, where),
            catalog=CatalogSnapshot.from_json(_get(data, "catalog", dict, where), where=f"{where}.catalog"),
            render_specs=_strings(data, "render_specs", where),
            embed=EmbedTarget.from_json(embed, where=f"{where}.embed") if embed is not None else None,
            render_workers=workers,
            device=_get(data, "device", (str, type(None)), where),
            packshot_spec=_get(data, "packshot_spec", (str, type(None)), where),
            assets=_strings(data, "assets", where),
        )


@dataclass(frozen=True)
class RunPlan:
    """What a run must do (counts per kind) and the batches that do it.

    no_model: why nothing is embedded or indexed (no model published yet), or None.
    """

    catalog: CatalogSnapshot
    products: int
    assets: int
    reused: int
    to_render: dict[str, int]
    to_embed: int
    to_packshot: int
    known_quarantined: list[dict[str, Any]]
    render_specs: tuple[str, ...]
    embed: EmbedTarget | None
    assets_per_batch: int
    batches: tuple[Batch, ...]
    no_model: str | None = field(default=None)

    def waiting_for_a_model(self, why: str) -> RunPlan:
        return replace(self, no_model=why)

    def to_json(self) -> dict[str, Any]:
        out = {
            "catalog": self.catalog.to_json(),
            "manifest": self.catalog.uri,  # for people reading the run's record
            "products": self.products,
            "assets": self.assets,
            "reused": self.reused,
            "to_render": dict(self.to_render),
            "to_embed": self.to_embed,
            "to_packshot": self.to_packshot,
            "known_quarantined": list(self.known_quarantined),
            "render_specs": list(self.render_specs),
            "embed": self.embed.to_json() if self.embed else None,
            "assets_per_batch": self.assets_per_batch,
            "batches": [b.to_json() for b in self.batches],
        }
        if self.no_model is not None:
            out["no_model"] = self.no_model
        return out

    @classmethod
    def from_json(cls, data: Any, *, where: str = "plan") -> RunPlan:
        embed = _get(data, "embed", (dict, type(None)), where)
        to_render = _get(data, "to_render", dict, where)
        return cls(
            catalog=CatalogSnapshot.from_json(_get(data, "catalog", dict, where), where=f"{where}.catalog"),
            products=_get(data, "products", int, where),
            assets=_get(data, "assets", int, where),
            reused=_get(data, "reused", int, where),
            to_render={str(k): int(v) for k, v in to_render.items()},
            to_embed=_get(data, "to_embed", int, where),
            to_packshot=_get(data, "to_packshot", int, where),
            known_quarantined=list(_get(data, "known_quarantined", list, where)),
            render_specs=_strings(data, "render_specs", where),
            embed=EmbedTarget.from_json(embed, where=f"{where}.embed") if embed is not None else None,
            assets_per_batch=_get(data, "assets_per_batch", int, where),
            batches=tuple(
                Batch.from_json(b, where=f"{where}.batches[{i}]")
                for i, b in enumerate(_get(data, "batches", list, where))
            ),
            no_model=data.get("no_model"),
        )
