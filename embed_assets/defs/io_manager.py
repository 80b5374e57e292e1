"""Stores asset values as files a person can open: Parquet for frames, JSON otherwise.

It only stores and loads values. Claiming the artifact home for a run (the run-config check and
the home's lock) is :class:`~embed_assets.defs.resources.ArtifactStoreResource`'s setup.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl

from embed_assets.home import HOME_SETTING, default_home
from embed_assets.lineage import build_info, file_sha256
from embed_assets.object_home import ObjectHome, is_remote, parse_home, pull, pull_paths_in, push

LATEST = "latest.json"  # per asset folder: which file the last materialization wrote


def read_value(path: Path):
    """A value file as :class:`PolarsJsonIOManager` wrote it: a frame (``.parquet``) or JSON."""
    return pl.read_parquet(path) if path.suffix == ".parquet" else json.loads(path.read_text())


def latest_value(home: str | Path, asset: str):
    """The value the last materialization of ``asset`` left in the artifact home ``home`` (what
    the next run reads), for scripts that study a finished run."""
    return read_value(PolarsJsonIOManager(home_dir=str(home)).latest_path(dg.AssetKey(asset)))


class PolarsJsonIOManager(dg.ConfigurableIOManager):
    """Writes ``pl.DataFrame`` values to ``<home_dir>/assets/<asset>/<sha256[:16]>.parquet`` and
    anything JSON-serialisable to ``.../<sha256[:16]>.json``, named by the file's own hash, and
    records which one is the latest in ``<asset>/latest.json``. Writes go to a temp file first
    and are renamed, so a killed run never leaves a half-written asset behind. Each
    materialization records the file's path and SHA-256, the package version and git commit.

    An object-store ``home_dir`` (``s3://bucket/prefix``) is written the same way in its staging
    folder, then pushed, value and ``latest.json`` last (after every file the step wrote, so a
    value never names a folder that is not in the store yet); ``value_path`` is the object's URI.
    Loading pulls the latest value, and the staging paths it names (model, BEIR folder, index)."""

    home_dir: str = default_home()

    def _object_home(self) -> ObjectHome | None:
        return parse_home(self.home_dir, HOME_SETTING) if is_remote(self.home_dir) else None

    @property
    def base_dir(self) -> Path:
        home = self._object_home()
        return (home.staging if home is not None else Path(self.home_dir)) / "assets"

    def _folder(self, asset_key: dg.AssetKey) -> Path:
        return self.base_dir.joinpath(*asset_key.path)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        folder = self._folder(context.asset_key)
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".parquet" if isinstance(obj, pl.DataFrame) else ".json"
        tmp = folder / f".{context.run_id}{suffix}.tmp"
        if suffix == ".parquet":
            obj.write_parquet(tmp)
        else:
            tmp.write_text(json.dumps(obj, indent=2, default=str, sort_keys=True))
        sha256 = file_sha256(tmp)
        # Content-addressed and immutable: a file is never rewritten, so every past
        # materialization's path still holds exactly what that run produced.
        path = folder / f"{sha256[:16]}{suffix}"
        if path.exists():
            tmp.unlink()
        else:
            tmp.replace(path)
        pointer = folder / f".{LATEST}.tmp"
        pointer.write_text(json.dumps({"file": path.name, "sha256": sha256, "run_id": context.run_id}))
        pointer.replace(folder / LATEST)
        shown = str(path.resolve())
        if (home := self._object_home()) is not None:
            push(home)
            shown = home.url(path.relative_to(home.staging).as_posix())
        context.add_output_metadata(
            {
                "value_path": dg.MetadataValue.path(shown),
                "value_sha256": sha256,
                "value_bytes": path.stat().st_size,
                **build_info(),
            }
        )

    def latest_path(self, asset_key: dg.AssetKey) -> Path:
        """The file the last materialization of ``asset_key`` in this home wrote."""
        folder = self._folder(asset_key)
        if (home := self._object_home()) is not None:
            rel = folder.relative_to(home.staging).as_posix()
            pull(home, f"{rel}/{LATEST}")
            if (folder / LATEST).exists():
                pull(home, f"{rel}/{json.loads((folder / LATEST).read_text())['file']}")
        try:
            return folder / json.loads((folder / LATEST).read_text())["file"]
        except FileNotFoundError:
            # A home written before artifacts were content-addressed: <asset>.parquet|json.
            for suffix in (".parquet", ".json"):
                if (legacy := folder.with_suffix(suffix)).exists():
                    return legacy
        raise FileNotFoundError(
            f"asset {asset_key.to_user_string()} has not been materialized in {self.home_dir}"
        )

    def load_input(self, context: dg.InputContext):
        value = read_value(self.latest_path(context.upstream_output.asset_key))
        if (home := self._object_home()) is not None and not isinstance(value, pl.DataFrame):
            pull_paths_in(home, value)
        return value
