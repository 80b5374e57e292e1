"""What Dagster recorded about earlier materializations: the versions a run consumed."""

from __future__ import annotations

import dagster as dg

DATA_VERSION_TAG = "dagster/data_version"


def recorded_versions(context: dg.AssetExecutionContext, *assets: str) -> dict[str, str | None]:
    """The data version Dagster recorded for the latest materialization of each of ``assets``:
    the ones this run's inputs were loaded from, so a model card names the same versions as
    Dagster's own lineage. None for an asset this instance never materialized."""
    versions: dict[str, str | None] = {}
    for name in assets:
        event = context.instance.get_latest_materialization_event(dg.AssetKey(name))
        mat = event.asset_materialization if event is not None else None
        versions[name] = (mat.tags or {}).get(DATA_VERSION_TAG) if mat is not None else None
    return versions
