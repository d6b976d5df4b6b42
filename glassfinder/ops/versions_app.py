"""A read-only web app, served by the Airflow API server, listing index versions and pipeline runs.

Mounted by the plugin under /glassfinder: `/` is a page for people; `/api/...` gives the same in
JSON (every version with its manifest's counts, evaluation figures and gate decision; the
recent runs of each DAG with their summaries and metrics). It reads the object store only.
"""

from __future__ import annotations

import html
import json
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from glassfinder import layout, settings
from glassfinder.errors import GlassFinderError, http_status
from glassfinder.index.versions import list_versions, read_current, read_manifest
from glassfinder.store import open_store
from glassfinder.store.base import ObjectStore

DAG_IDS = ("glassfinder_catalog_reindex", "glassfinder_product_onboarding", "glassfinder_training_data")


def version_rows(store: ObjectStore, name: str) -> list[dict[str, Any]]:
    """One row per version of index `name`, newest first."""
    current, _ = read_current(store, name)
    live = int(current["version"]) if current else None
    rows: list[dict[str, Any]] = []
    for version, complete in sorted(list_versions(store, name).items(), reverse=True):
        if not complete:
            rows.append({"version": version, "complete": False, "current": False})
            continue
        m = read_manifest(store, name, version)
        ev = m.get("evaluation") or {}
        rows.append(
            {
                "version": version,
                "complete": True,
                "current": version == live,
                "created_at": m.get("created_at"),
                "kind": m.get("kind"),
                "parent": m.get("parent"),
                "products": m["counts"]["products"],
                "vectors": m["counts"]["vectors"],
                "dim": m["counts"]["dim"],
                "factory": m.get("factory"),
                "model": f"{m.get('model')}@{m.get('model_sha')}",
                "spec_hash": m.get("spec_hash"),
                "evaluation": {
                    k: ev.get(k) for k in ("top1", "top5", "top10", "mAP@10", "queries", "aggregation")
                }
                if ev
                else None,
                "gate": m.get("gate"),
            }
        )
    return rows


def run_rows(store: ObjectStore, dag_id: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` runs of a DAG with their summary and metrics records (either may be absent)."""
    runs: dict[str, dict[str, Any]] = {}
    prefix = layout.run_records_prefix(dag_id)
    for info in store.list(prefix):
        run_id, _, record = info.key[len(prefix) :].partition("/")
        if record.endswith(".json"):
            try:
                runs.setdefault(run_id, {})[record.removesuffix(".json")] = json.loads(store.get(info.key))
            except (GlassFinderError, json.JSONDecodeError):
                continue

    def finished(r: dict[str, Any]) -> str:
        return str((r.get("summary") or {}).get("finished_at") or (r.get("metrics") or {}).get("end") or "")

    ordered = sorted(runs.items(), key=lambda item: finished(item[1]), reverse=True)[:limit]
    return [{"run_id": run_id, **records} for run_id, records in ordered]


def _cell(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def render_page(name: str, versions: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> str:
    rows = []
    for v in versions:
        ev = v.get("evaluation") or {}
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{_cell(c)}</td>"
                for c in (
                    f"v{v['version']}" + (" (CURRENT)" if v["current"] else ""),
                    v.get("created_at") if v["complete"] else "partial (abandoned publish)",
                    v.get("kind"),
                    v.get("parent"),
                    v.get("products"),
                    v.get("vectors"),
                    v.get("factory"),
                    v.get("model"),
                    ev.get("top1"),
                    ev.get("top10"),
                    ev.get("mAP@10"),
                    "passed" if (v.get("gate") or {}).get("passed") else (v.get("gate") or {}).get("forced"),
                )
            )
            + "</tr>"
        )
    run_rows_html = []
    for dag_id, items in runs.items():
        for r in items:
            s, m = r.get("summary") or {}, r.get("metrics") or {}
            index = s.get("index") or {}
            outcome = f"v{index.get('version')}" if index.get("published") else index.get("reason", "")
            run_rows_html.append(
                "<tr>"
                + "".join(
                    f"<td>{_cell(c)}</td>"
                    for c in (
                        dag_id,
                        r["run_id"],
                        m.get("state") or ("success" if s.get("ok") else "failed" if s else ""),
                        m.get("seconds"),
                        s.get("rendered"),
                        s.get("reused"),
                        s.get("embedded"),
                        s.get("quarantined"),
                        outcome,
                    )
                )
                + "</tr>"
            )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "version",
            "created",
            "kind",
            "parent",
            "products",
            "vectors",
            "factory",
            "model",
            "top-1",
            "top-10",
            "mAP@10",
            "gate",
        )
    )
    run_head = "".join(
        f"<th>{h}</th>"
        for h in ("DAG", "run", "state", "seconds", "rendered", "reused", "embedded", "quarantined", "index")
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GlassFinder index {_cell(name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#f3f3f3}}</style></head>
<body><h1>Index <code>{_cell(name)}</code>: versions</h1>
<table id="versions"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
<h2>Recent pipeline runs</h2>
<table id="runs"><thead><tr>{run_head}</tr></thead><tbody>{"".join(run_rows_html)}</tbody></table>
</body></html>"""


def create_app(store_uri: str | None = None, *, require_login: bool = False) -> FastAPI:
    """The app; the store is resolved per request (default $GLASSFINDER_STORE_URI), so it follows config.

    require_login: answer only users the Airflow API server has authenticated (its JWT, as a
    Bearer token or the UI's session cookie); what the plugin mounts.
    """
    dependencies = []
    if require_login:
        # airflow: only when mounted in Airflow's API server; the standalone app runs without it
        from airflow.api_fastapi.core_api.security import requires_authenticated

        dependencies.append(Depends(requires_authenticated()))
    app = FastAPI(title="GlassFinder index versions", version="1", dependencies=dependencies)

    def store() -> ObjectStore:
        return open_store(store_uri or settings.store_uri())

    def versions_or_404(name: str) -> list[dict[str, Any]]:
        try:
            layout.index_current_key(name)
            return version_rows(store(), name)
        except GlassFinderError as exc:
            raise HTTPException(status_code=http_status(exc), detail=str(exc)) from exc

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "store": store().uri}

    @app.get("/api/indexes/{name}/versions")
    def versions(name: str) -> list[dict[str, Any]]:
        return versions_or_404(name)

    @app.get("/api/indexes/{name}/versions/{version}")
    def manifest(name: str, version: int) -> dict[str, Any]:
        try:
            return read_manifest(store(), name, version)
        except GlassFinderError as exc:
            raise HTTPException(status_code=http_status(exc), detail=str(exc)) from exc

    @app.get("/api/runs/{dag_id}")
    def runs(dag_id: str, limit: int = Query(20, ge=1, le=500)) -> list[dict[str, Any]]:
        try:
            return run_rows(store(), dag_id, limit)
        except GlassFinderError as exc:
            raise HTTPException(status_code=http_status(exc), detail=str(exc)) from exc

    @app.get("/", response_class=HTMLResponse)
    def page(
        index: str = Query(default_factory=settings.index_name), limit: int = Query(10, ge=1, le=200)
    ) -> str:
        s = store()
        recent = {dag_id: run_rows(s, dag_id, limit) for dag_id in DAG_IDS}
        return render_page(index, versions_or_404(index), recent)

    return app
