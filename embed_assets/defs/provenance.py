"""What Dagster recorded about earlier materializations: the versions a run consumed, and the
values an incremental run starts from."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl

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


def previous_materialization(context: dg.AssetExecutionContext, asset: str):
    """The latest materialization of ``asset`` by an earlier run (an ``EventLogRecord``), or None."""
    page = context.instance.fetch_materializations(dg.AssetKey(asset), limit=5)
    return next((r for r in page.records if r.run_id != context.run_id), None)


def input_materialization(context: dg.AssetExecutionContext, record, upstream: str):
    """The materialization of ``upstream`` that ``record``'s run read, from Dagster's event pointer."""
    pointer = (record.asset_materialization.tags or {}).get(f"dagster/input_event_pointer/{upstream}", "")
    if not pointer.isdigit():
        return None
    found = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey(upstream), storage_ids=[int(pointer)]), limit=1
    )
    return found.records[0] if found.records else None


def recorded_value(record):
    """The value a materialization wrote (its ``value_path``: a frame, or a JSON value), when the
    file is still there; else None."""
    meta = record.asset_materialization.metadata if record is not None else {}
    path = Path(str(meta["value_path"].value)) if "value_path" in meta else None
    if path is None or not path.is_file():
        return None
    return pl.read_parquet(path) if path.suffix == ".parquet" else json.loads(path.read_text())
