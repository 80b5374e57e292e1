"""Stage 5: positive-aware hard negatives for the train and validation queries (the latter train
only in a refit, after validation has chosen)."""

import time
from functools import partial
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from embed_assets.defs.assets.indexing import base_embedding_cache
from embed_assets.defs.configs import MinedNegativesConfig
from embed_assets.defs.metadata import counts_table, histogram, image, preview, stage_metrics
from embed_assets.defs.resources import HOME_POOL, ArtifactStoreResource, BaseModelResource
from embed_assets.evaluation.report import overlaid_distributions_png
from embed_assets.index.chunk_index import ChunkIndex, EmbeddingCache
from embed_assets.lineage import code_version, data_version
from embed_assets.mining.negatives import mine_hard_negatives


@dg.asset(
    pool=HOME_POOL,
    group_name="mining",
    kinds={"lancedb", "polars"},
    code_version=code_version(__name__, "embed_assets.mining.negatives"),
    description="Hard negatives for every train and validation query from the base model's LanceDB index. Positive-aware: "
    "candidates above 0.95 × the positive's score, the query's positives and their neighbouring chunks are excluded.",
)
def mined_negatives(
    context: dg.AssetExecutionContext,
    config: MinedNegativesConfig,
    qa_splits: pl.DataFrame,
    base_chunk_index: dict,
    base_model: BaseModelResource,
    store: ArtifactStoreResource,
) -> dg.MaterializeResult[pl.DataFrame]:
    start = time.perf_counter()
    train = qa_splits.filter(pl.col("split").is_in(["train", "val"]))
    index = ChunkIndex(base_chunk_index["uri"], base_chunk_index["table"])
    model = base_model.load()
    cache = base_embedding_cache(base_chunk_index, model)  # holds the quality filter's question vectors
    mined, counts, dist = mine_hard_negatives(
        train,
        model,
        index,
        config.to_core(),
        embed=partial(cache.text_vectors, model=model) if cache else None,
    )
    seconds = time.perf_counter() - start
    return dg.MaterializeResult(
        value=mined,
        data_version=dg.DataVersion(data_version(mined, config)),
        metadata={
            **_queries_metadata(train, mined, cache),
            **_score_metadata(
                counts, dist, store.path("reports", context.run_id, "mined_negatives", "scores.png")
            ),
            "preview": preview(mined.select("question", "positive_score", "negative_scores")),
            "queries_per_second": round(train.height / max(seconds, 1e-9), 1),
            **stage_metrics(start),
        },
    )


def _queries_metadata(train: pl.DataFrame, mined: pl.DataFrame, cache: EmbeddingCache | None) -> dict:
    """How many queries were mined, how many question vectors were reused, negatives per query."""
    return {
        "train_queries": int((train["split"] == "train").sum()),
        "val_queries": int((train["split"] == "val").sum()),
        "queries_mined": mined.height,
        "question_embeddings_reused": cache.reused if cache else 0,
        "question_embeddings_computed": cache.computed if cache else train.height,
        "negatives_per_query_mean": round(float(mined["negative_chunk_ids"].list.len().mean() or 0), 2),
    }


def _score_metadata(counts: dict[str, int], dist: dict[str, list[float]], png_path: Path) -> dict:
    """The candidates' counters, and the positives' and negatives' scores (histograms and a plot)."""
    pos, neg = np.array(dist["positive"]), np.array(dist["negative"])
    return {
        "candidate_counts": counts_table(counts, key="counter"),
        "removed_by_ceiling": int(counts.get("removed_by_ceiling", 0)),
        "positive_score_mean": round(float(pos.mean()), 4) if pos.size else 0.0,
        "negative_score_mean": round(float(neg.mean()), 4) if neg.size else 0.0,
        "positive_scores": histogram(pos, label="positive score"),
        "negative_scores": histogram(neg, label="negative score"),
        **image(
            overlaid_distributions_png(
                {"positives": pos, "mined negatives": neg},
                xlabel="base-model cosine to the query",
                title="positive vs hard-negative scores",
            ),
            png_path,
            "score_distributions",
        ),
    }
