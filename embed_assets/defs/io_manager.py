"""Stores asset values as files a person can open: Parquet for frames, JSON otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import polars as pl


class PolarsJsonIOManager(dg.ConfigurableIOManager):
    """Writes ``pl.DataFrame`` values to ``<base_dir>/<asset>.parquet`` and anything
    JSON-serialisable to ``<base_dir>/<asset>.json``. Writes go to a temp file first
    and are renamed, so a killed run never leaves a half-written asset behind."""

    base_dir: str = str(Path(os.environ.get("EMBED_ASSETS_HOME", ".embed_assets")) / "assets")

    def _path(self, context, suffix: str) -> Path:
        key = context.asset_key.path
        return Path(self.base_dir).joinpath(*key).with_suffix(suffix)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        is_frame = isinstance(obj, pl.DataFrame)
        path = self._path(context, ".parquet" if is_frame else ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        if is_frame:
            obj.write_parquet(tmp)
        else:
            tmp.write_text(json.dumps(obj, indent=2, default=str))
        tmp.replace(path)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path.resolve()))})

    def load_input(self, context: dg.InputContext):
        parquet = self._path(context.upstream_output, ".parquet")
        if parquet.exists():
            return pl.read_parquet(parquet)
        js = self._path(context.upstream_output, ".json")
        if js.exists():
            return json.loads(js.read_text())
        raise FileNotFoundError(
            f"asset {context.upstream_output.asset_key.to_user_string()} has not been materialized ({parquet})"
        )
