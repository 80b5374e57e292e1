"""Stage 3: score every pair and decide which to keep."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.configs import QAQualityConfig
from embed_assets.defs.metadata import counts_table, frame_version, histogram, preview
from embed_assets.defs.resources import BaseModelResource
from embed_assets.mining.index import ChunkIndex
from embed_assets.quality.filters import score_pairs


@dg.asset(
    group_name="quality",
    kinds={"polars"},
    description="A score per pair (round-trip rank of the base model, answer support, LLM judge when one ran), "
    "near-duplicate questions (cosine ≥ 0.9) marked, and a kept flag with the drop reason.",
)
def qa_quality_scores(
    context: dg.AssetExecutionContext,
    config: QAQualityConfig,
    synthetic_qa: pl.DataFrame,
    document_chunks: pl.DataFrame,
    base_chunk_index: dict,
    base_model: BaseModelResource,
) -> dg.MaterializeResult[pl.DataFrame]:
    start = time.perf_counter()
    index = ChunkIndex(base_chunk_index["uri"], base_chunk_index["table"])
    scored = score_pairs(synthetic_qa, document_chunks, base_model.load(), index, config.to_core())
    kept = scored.filter(pl.col("kept"))
    drops = dict(scored.filter(~pl.col("kept")).group_by("drop_reason").len().iter_rows())
    samples = scored.sample(min(10, scored.height), seed=0)
    return dg.MaterializeResult(
        value=scored,
        data_version=frame_version(scored.with_columns(pl.col("kept").cast(pl.String)), "qa_id"),
        metadata={
            "pairs": scored.height,
            "kept": kept.height,
            "kept_fraction": round(kept.height / max(scored.height, 1), 3),
            "dropped_by_reason": counts_table(drops),
            "roundtrip_rank_histogram": histogram(
                scored["roundtrip_rank"].to_list(), bins=config.roundtrip_top_k, label="rank"
            ),
            "score_histogram": histogram(scored["score"].to_list(), label="score"),
            "sample_pairs": preview(
                samples.select("question", "roundtrip_rank", "score", "kept", "drop_reason")
            ),
            "wall_seconds": round(time.perf_counter() - start, 2),
        },
    )
