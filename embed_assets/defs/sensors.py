"""Retrain when the source corpus changes."""

import os
from pathlib import Path

import dagster as dg

from embed_assets.defs.configs import run_config_errors
from embed_assets.defs.jobs import pipeline_job
from embed_assets.hashing import stable_hash
from embed_assets.ingest.documents import SUPPORTED_SUFFIXES


def corpus_fingerprint(corpus_dir: str | Path) -> str | None:
    """A cheap fingerprint of the corpus: every supported file's path, size and mtime.

    None when the folder is missing (the sensor then skips instead of failing).
    """
    root = Path(corpus_dir)
    if not root.is_dir():
        return None
    entries = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES:
            st = p.stat()
            entries.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return stable_hash(entries)


def file_fingerprint(path: str | Path) -> str | None:
    """A JSON Lines corpus' size and mtime; None when the file is missing."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return stable_hash({"size": st.st_size, "mtime_ns": st.st_mtime_ns})


def lancedb_fingerprint(uri: str, table: str) -> str | None:
    """The table's version and row count: LanceDB bumps the version on every write."""
    import lancedb

    try:
        tbl = lancedb.connect(uri).open_table(table)
    except Exception:  # a missing table is a skip, not a sensor failure
        return None
    return stable_hash({"version": tbl.version, "rows": tbl.count_rows()})


@dg.sensor(
    job=pipeline_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests a full pipeline run when the source changes: the production LanceDB chunk table "
    "($EMBED_ASSETS_LANCEDB_URI / $EMBED_ASSETS_LANCEDB_TABLE) when set, else a JSON Lines corpus "
    "($EMBED_ASSETS_CORPUS_JSONL) when set, else the files under the corpus folder ($EMBED_ASSETS_CORPUS_DIR, "
    "default data/corpus). With $EMBED_ASSETS_LABELLED_QUERIES (and $EMBED_ASSETS_LABELLED_SPLIT), the run "
    "is also scored and gated on those labelled queries. The cursor is the last source fingerprint seen.",
)
def corpus_change_sensor(context: dg.SensorEvaluationContext):
    lancedb_uri = os.environ.get("EMBED_ASSETS_LANCEDB_URI")
    if lancedb_uri:
        table = os.environ.get("EMBED_ASSETS_LANCEDB_TABLE", "chunks")
        fingerprint = lancedb_fingerprint(lancedb_uri, table)
        source = f"lancedb table {table} at {lancedb_uri}"
        source_config = {"lancedb_uri": lancedb_uri, "lancedb_table": table}
    elif corpus_jsonl := os.environ.get("EMBED_ASSETS_CORPUS_JSONL"):
        fingerprint = file_fingerprint(corpus_jsonl)
        source = f"JSON Lines corpus {corpus_jsonl}"
        source_config = {"corpus_jsonl": corpus_jsonl}
    else:
        corpus_dir = os.environ.get("EMBED_ASSETS_CORPUS_DIR", "data/corpus")
        fingerprint = corpus_fingerprint(corpus_dir)
        source = f"corpus folder {corpus_dir}"
        source_config = {"corpus_dir": corpus_dir}
    if fingerprint is None:
        return dg.SkipReason(f"{source} does not exist")
    if fingerprint == context.cursor:
        return dg.SkipReason(f"{source} unchanged")
    ops: dict = {"source_documents": {"config": source_config}}
    if labelled := os.environ.get("EMBED_ASSETS_LABELLED_QUERIES"):
        eval_config = {"labelled_queries_dir": labelled}
        if split := os.environ.get("EMBED_ASSETS_LABELLED_SPLIT"):
            eval_config["labelled_queries_split"] = split
        ops["retrieval_eval"] = {"config": eval_config}
    run_config = {"ops": ops}
    if errors := run_config_errors(run_config):
        # Left unrequested (and the cursor unmoved): the next tick after the fix requests it.
        return dg.SkipReason(f"{source} changed, but its run config is invalid: " + "; ".join(errors))
    context.update_cursor(fingerprint)
    return dg.RunRequest(
        run_key=f"corpus-{fingerprint}",
        run_config=run_config,
        tags={"embed_assets/trigger": "corpus_change", "embed_assets/corpus_fingerprint": fingerprint},
    )
