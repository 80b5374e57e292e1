"""Retrain when the source changes, with the user's recipe.

The sensor takes the :class:`CorpusSourceResource` as a parameter: the source (a folder, a JSON
Lines file or a production LanceDB table, with its column names), the user's recipe (a YAML run
config) and the labelled queries all come from it, and every run it requests carries them.

Fingerprints are content hashes, so touching a file or compacting a LanceDB table
(``table.optimize()``) triggers nothing. A LanceDB table's is read incrementally: a tick reads the
rows of new fragments only (``lancedb_fingerprint.py``). The cursor counts the changes it has seen
and the run key includes that count: a corpus reverted to an earlier state is a new change and
retrains (Dagster drops a run request whose key it has seen before).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import yaml
from pydantic import Field

from embed_assets.defs.configs import run_config_errors, upgrade_run_config
from embed_assets.defs.jobs import pipeline_job
from embed_assets.defs.lancedb_fingerprint import PREFIX as LANCEDB_PREFIX
from embed_assets.defs.lancedb_fingerprint import lancedb_fingerprint, legacy_lancedb_fingerprint
from embed_assets.hashing import stable_hash
from embed_assets.ingest.documents import SUPPORTED_SUFFIXES
from embed_assets.lineage import file_sha256


def corpus_fingerprint(corpus_dir: str | Path) -> str | None:
    """A content fingerprint of the corpus: every supported file's path and SHA-256.

    None when the folder is missing (the sensor then skips instead of failing).
    """
    root = Path(corpus_dir)
    if not root.is_dir():
        return None
    entries = [
        (str(p.relative_to(root)), file_sha256(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
    ]
    return stable_hash(entries)


def file_fingerprint(path: str | Path) -> str | None:
    """A JSON Lines corpus' SHA-256; None when the file is missing."""
    p = Path(path)
    return file_sha256(p)[:16] if p.is_file() else None


class CorpusSourceResource(dg.ConfigurableResource):
    """What the corpus-change sensor watches, and the recipe of the runs it requests.

    The defaults come from ``$EMBED_ASSETS_*`` environment variables, so a container can be set
    up without code; set the fields in ``Definitions`` (or the UI) instead where you can.
    """

    corpus_dir: str = Field(
        default=os.environ.get("EMBED_ASSETS_CORPUS_DIR", "data/corpus"), description="Folder of documents."
    )
    corpus_jsonl: str | None = Field(
        default=os.environ.get("EMBED_ASSETS_CORPUS_JSONL"), description="A JSON Lines corpus instead."
    )
    lancedb_uri: str | None = Field(
        default=os.environ.get("EMBED_ASSETS_LANCEDB_URI"), description="A production LanceDB instead."
    )
    lancedb_table: str = Field(default=os.environ.get("EMBED_ASSETS_LANCEDB_TABLE", "chunks"))
    text_column: str = Field(default=os.environ.get("EMBED_ASSETS_TEXT_COLUMN", "text"))
    title_column: str | None = Field(default=os.environ.get("EMBED_ASSETS_TITLE_COLUMN"))
    id_column: str | None = Field(default=os.environ.get("EMBED_ASSETS_ID_COLUMN"))
    recipe: str | None = Field(
        default=os.environ.get("EMBED_ASSETS_RECIPE"),
        description="A YAML run config ({ops: {<asset>: {config: ...}}}) every requested run uses: your "
        "generator settings, steps, gate metrics... The source fields above override its source_documents.",
    )
    labelled_queries_dir: str | None = Field(default=os.environ.get("EMBED_ASSETS_LABELLED_QUERIES"))
    labelled_queries_split: str | None = Field(default=os.environ.get("EMBED_ASSETS_LABELLED_SPLIT"))
    selection_queries_split: str | None = Field(
        default=os.environ.get("EMBED_ASSETS_SELECTION_SPLIT"),
        description="Another split of labelled_queries_dir that chooses the recipe, checkpoint and merge "
        "weight (finetuned_model.selection_queries_split).",
    )

    def describe(self) -> str:
        if self.lancedb_uri:
            return f"lancedb table {self.lancedb_table} at {self.lancedb_uri}"
        if self.corpus_jsonl:
            return f"JSON Lines corpus {self.corpus_jsonl}"
        return f"corpus folder {self.corpus_dir}"

    def _columns(self) -> list[str]:
        return list(dict.fromkeys(c for c in (self.text_column, self.title_column, self.id_column) if c))

    def fingerprint(self) -> str | None:
        """A hash of the source's content; None when it is missing."""
        if self.lancedb_uri:
            return lancedb_fingerprint(self.lancedb_uri, self.lancedb_table, self._columns())
        if self.corpus_jsonl:
            return file_fingerprint(self.corpus_jsonl)
        return corpus_fingerprint(self.corpus_dir)

    def is_legacy_fingerprint_of_current_content(self, last: str | None) -> bool:
        """Whether ``last`` is a fingerprint of the full-read scheme (before ``rows-`` ones) and
        the table's content still has it: the cursor then moves to the new scheme without a run.
        One full read, on the first tick after the upgrade only."""
        if not self.lancedb_uri or not last or last.startswith(LANCEDB_PREFIX):
            return False
        return legacy_lancedb_fingerprint(self.lancedb_uri, self.lancedb_table, self._columns()) == last

    def source_config(self) -> dict:
        if self.lancedb_uri:
            fields = {
                "lancedb_uri": self.lancedb_uri,
                "lancedb_table": self.lancedb_table,
                "text_column": self.text_column,
                "title_column": self.title_column,
                "id_column": self.id_column,
            }
            return {k: v for k, v in fields.items() if v is not None}
        if self.corpus_jsonl:
            return {"corpus_jsonl": self.corpus_jsonl}
        return {"corpus_dir": self.corpus_dir}

    def run_config(self) -> dict:
        """The recipe, with this source and the labelled queries set in it.

        Raises ValueError naming the recipe file when it cannot be read as a mapping.
        """
        config: dict = {}
        if self.recipe:
            try:
                config = yaml.safe_load(Path(self.recipe).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
                raise ValueError(f"recipe {self.recipe}: {e}") from None
            if not isinstance(config, dict) or not isinstance(config.get("ops", {}), dict):
                raise ValueError(
                    f"recipe {self.recipe}: must be a mapping like 'ops: {{<asset>: {{config: ...}}}}'"
                )
        config, _ = upgrade_run_config(config)  # a recipe file in the layout before training settings moved
        ops = config.setdefault("ops", {})
        ops["source_documents"] = {"config": self.source_config()}
        if self.labelled_queries_dir:
            evaluation = ops.setdefault("retrieval_eval", {}).setdefault("config", {})
            evaluation["labelled_queries_dir"] = self.labelled_queries_dir
            if self.labelled_queries_split:
                evaluation["labelled_queries_split"] = self.labelled_queries_split
            if self.selection_queries_split:
                training = ops.setdefault("training_recipe", {}).setdefault("config", {})
                training.setdefault("finetuned_model", {})["selection_queries_split"] = (
                    self.selection_queries_split
                )
                training["selection_queries_dir"] = self.labelled_queries_dir
        return config


def _read_cursor(cursor: str | None) -> tuple[str | None, int]:
    """(last fingerprint, number of changes seen) from the cursor; a bare fingerprint is an old cursor."""
    if not cursor:
        return None, 0
    try:
        state = json.loads(cursor)
        return state["fingerprint"], int(state["changes"])
    except (ValueError, KeyError, TypeError):
        return cursor, 0


@dg.sensor(
    job=pipeline_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests a pipeline run, with the recipe of the corpus_source resource, when the content of "
    "its source changes (a folder, a JSON Lines file or a production LanceDB table). Touching a file or "
    "compacting the table is no change; reverting to an earlier state is one.",
)
def corpus_change_sensor(context: dg.SensorEvaluationContext, corpus_source: CorpusSourceResource):
    source = corpus_source.describe()
    fingerprint = corpus_source.fingerprint()
    if fingerprint is None:
        return dg.SkipReason(f"{source} does not exist")
    last, changes = _read_cursor(context.cursor)
    if fingerprint == last:
        return dg.SkipReason(f"{source} unchanged")
    if corpus_source.is_legacy_fingerprint_of_current_content(last):
        context.update_cursor(json.dumps({"fingerprint": fingerprint, "changes": changes}))
        return dg.SkipReason(f"{source} unchanged (its fingerprint moved to the incremental scheme)")
    try:
        run_config = corpus_source.run_config()
    except ValueError as e:
        return dg.SkipReason(f"{source} changed, but {e}")
    if errors := run_config_errors(run_config):
        # Left unrequested (and the cursor unmoved): the next tick after the fix requests it.
        return dg.SkipReason(f"{source} changed, but its run config is invalid: " + "; ".join(errors))
    changes += 1
    context.update_cursor(json.dumps({"fingerprint": fingerprint, "changes": changes}))
    return dg.RunRequest(
        run_key=f"corpus-{changes}-{fingerprint}",
        run_config=run_config,
        tags={
            "embed_assets/trigger": "corpus_change",
            "embed_assets/corpus_fingerprint": fingerprint,
            "embed_assets/change": str(changes),
        },
    )
