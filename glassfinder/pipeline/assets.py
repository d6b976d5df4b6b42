"""The Airflow Assets the DAGs announce and listen to, as plain names and URIs (one definition).

- the catalogue source: the shop's export changed -> onboarding catches the catalogue up;
- a model: a new model was published -> the nightly re-index runs with it.
"""

from __future__ import annotations

CATALOG_SOURCE = ("glassfinder_catalog_source", "glassfinder://catalog/source")


def model_asset(model_name: str) -> tuple[str, str]:
    """(asset name, URI) announced when a model named `model_name` gets a new CURRENT."""
    return f"glassfinder_model_{model_name}", f"glassfinder://models/{model_name}"
