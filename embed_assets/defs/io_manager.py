"""Stores asset values as files a person can open: Parquet for frames, JSON otherwise.

Every asset's value passes through this IO manager, so it is also where a run claims its
artifact home: on setup (once per run: the pipeline uses the in-process executor) it
validates the whole run config and takes the home's lock (:mod:`embed_assets.home_lock`);
on teardown it releases it. A run launched from the CLI, the UI or a sensor thus does no
work with a bad config and never shares a home with another run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import PrivateAttr

from embed_assets.home_lock import HomeLock


class PolarsJsonIOManager(dg.ConfigurableIOManager):
    """Writes ``pl.DataFrame`` values to ``<home_dir>/assets/<asset>.parquet`` and anything
    JSON-serialisable to ``<home_dir>/assets/<asset>.json``. Writes go to a temp file first
    and are renamed, so a killed run never leaves a half-written asset behind."""

    home_dir: str = os.environ.get("EMBED_ASSETS_HOME", ".embed_assets")
    lock_timeout_s: float = 0.0
    _lock: HomeLock | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path:
        return Path(self.home_dir) / "assets"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is None:  # built outside a run (e.g. a direct call in a script)
            return
        from embed_assets.defs.configs import validate_run_config

        validate_run_config(run.run_config)  # before any asset does work, however the run was launched
        self._lock = HomeLock(self.home_dir, run.run_id, self.lock_timeout_s).acquire()
        if context.instance is not None:  # lets `embed-assets clean-runs` tell a killed run from a live one
            from embed_assets.defs.runs import claim_tags

            context.instance.add_run_tags(run.run_id, claim_tags(self.home_dir))
        if stale := self._lock.stale:
            context.log.warning(
                f"the previous {stale.describe()} never released {self.home_dir}: its process was killed. "
                "Dagster may still list it as STARTED; `embed-assets clean-runs` marks such runs failed."
            )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _path(self, context, suffix: str) -> Path:
        key = context.asset_key.path
        return self.base_dir.joinpath(*key).with_suffix(suffix)

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
