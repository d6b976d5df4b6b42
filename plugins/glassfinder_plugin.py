"""The GlassFinder Airflow plugin: template macros, a run-metrics listener and the index versions app.

Registration only; what each part does lives in glassfinder.ops.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from glassfinder.ops import macros, pool_check, run_metrics
from glassfinder.ops.versions_app import create_app


class GlassFinderPlugin(AirflowPlugin):
    # AirflowPlugin declares these as class-level lists; the subclass fills them in.
    name = "glassfinder"
    macros: list[Any] = [macros.current_index_version, macros.current_index_uri]
    listeners: list[Any] = [run_metrics, pool_check]
    fastapi_apps: list[dict[str, Any]] = [
        {
            "app": create_app(require_login=True),
            "url_prefix": "/glassfinder",
            "name": "GlassFinder index versions",
        }
    ]
    external_views: list[dict[str, Any]] = [
        {"name": "GlassFinder indexes", "href": "/glassfinder/", "destination": "nav", "category": "browse"}
    ]
