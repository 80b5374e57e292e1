"""Retrain when the source corpus changes."""

import os
from pathlib import Path

import dagster as dg

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


@dg.sensor(
    job=pipeline_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests a full pipeline run when the files under the corpus folder change "
    "($EMBED_ASSETS_CORPUS_DIR, default data/corpus). The cursor is the last corpus fingerprint seen.",
)
def corpus_change_sensor(context: dg.SensorEvaluationContext):
    corpus_dir = os.environ.get("EMBED_ASSETS_CORPUS_DIR", "data/corpus")
    fingerprint = corpus_fingerprint(corpus_dir)
    if fingerprint is None:
        return dg.SkipReason(f"corpus folder {corpus_dir} does not exist")
    if fingerprint == context.cursor:
        return dg.SkipReason("corpus unchanged")
    context.update_cursor(fingerprint)
    return dg.RunRequest(
        run_key=f"corpus-{fingerprint}",
        run_config={"ops": {"source_documents": {"config": {"corpus_dir": corpus_dir}}}},
        tags={"embed_assets/trigger": "corpus_change", "embed_assets/corpus_fingerprint": fingerprint},
    )
