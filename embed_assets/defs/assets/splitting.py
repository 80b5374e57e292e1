"""Stage 4: train/val/test split grouped by source document, test written as BEIR."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.configs import QASplitsConfig
from embed_assets.defs.metadata import preview, stage_metrics
from embed_assets.defs.resources import HOME_POOL, ArtifactStoreResource
from embed_assets.lineage import artifact_hashes, code_version, data_version
from embed_assets.splitting.splits import grouped_split, leaked_documents, write_beir


def beir_dir(store: ArtifactStoreResource, qa_splits: pl.DataFrame, document_chunks: pl.DataFrame):
    """The BEIR folder of a split frame and its corpus, named by their full content (the split
    assignment included), so an earlier evaluation's folder is never rewritten with another test set."""
    corpus = document_chunks.select("chunk_id", "text")
    return store.path("beir", data_version(qa_splits) + "-" + data_version(corpus, length=8))


@dg.asset(
    pool=HOME_POOL,
    group_name="splitting",
    kinds={"polars"},
    code_version=code_version(__name__, "embed_assets.splitting.splits"),
    description="Kept pairs split train/val/test by source document (no document feeds two splits). "
    "The test and val splits are also written as BEIR folders (corpus = all chunks).",
    check_specs=[dg.AssetCheckSpec("no_document_leakage", asset="qa_splits", blocking=True)],
)
def qa_splits(
    context: dg.AssetExecutionContext,
    config: QASplitsConfig,
    qa_quality_scores: pl.DataFrame,
    document_chunks: pl.DataFrame,
    store: ArtifactStoreResource,
):  # no return annotation: with check specs Dagster would read it as a multi-output tuple
    start = time.perf_counter()
    kept = qa_quality_scores.filter(pl.col("kept"))
    split = grouped_split(kept, config.to_core())
    folder = beir_dir(store, split, document_chunks)
    write_beir(split, document_chunks, folder, splits=("test", "val"))
    leaks = leaked_documents(split)
    per_split = {
        name: (
            split.filter(pl.col("split") == name).height,
            split.filter(pl.col("split") == name).explode("doc_ids")["doc_ids"].n_unique(),
        )
        for name in ("train", "val", "test")
    }
    return dg.MaterializeResult(
        value=split,
        data_version=dg.DataVersion(data_version(split, config)),
        metadata={
            **{f"{k}_queries": v[0] for k, v in per_split.items()},
            **{f"{k}_documents": v[1] for k, v in per_split.items()},
            "beir_dir": dg.MetadataValue.path(str(folder.resolve())),
            "artifacts": dg.MetadataValue.json(artifact_hashes(folder)),
            "preview": preview(split.select("question", "split", "doc_ids")),
            **stage_metrics(start),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_document_leakage",
                passed=not leaks,
                metadata={
                    "leaked_documents": len(leaks),
                    "examples": ", ".join(sorted(leaks)[:10]) or "none",
                },
            )
        ],
    )
