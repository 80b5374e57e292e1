"""Stage 4: train/val/test split grouped by source document, test written as BEIR."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.configs import QASplitsConfig
from embed_assets.defs.metadata import frame_version, preview, stage_metrics
from embed_assets.defs.resources import ArtifactStoreResource
from embed_assets.splitting.splits import grouped_split, leaked_documents, write_beir


def beir_dir(store: ArtifactStoreResource, qa_splits: pl.DataFrame):
    """The BEIR folder of a given split frame (versioned, so old evaluations stay reproducible)."""
    return store.path(
        "beir",
        frame_version(qa_splits.with_columns(pl.col("split")), "qa_id").value + "-" + str(qa_splits.height),
    )


@dg.asset(
    group_name="splitting",
    kinds={"polars"},
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
    folder = beir_dir(store, split)
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
        data_version=frame_version(split.with_columns(pl.col("qa_id") + pl.col("split")), "qa_id"),
        metadata={
            **{f"{k}_queries": v[0] for k, v in per_split.items()},
            **{f"{k}_documents": v[1] for k, v in per_split.items()},
            "beir_dir": dg.MetadataValue.path(str(folder.resolve())),
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
