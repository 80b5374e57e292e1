"""Stage 3: score every pair and decide which to keep."""

import time
from functools import partial
from pathlib import Path

import dagster as dg
import polars as pl

from embed_assets.defs.assets.indexing import base_embedding_cache
from embed_assets.defs.configs import QAQualityConfig
from embed_assets.defs.metadata import counts_table, histogram, image, preview, stage_metrics
from embed_assets.defs.resources import (
    HOME_POOL,
    ArtifactStoreResource,
    BaseModelResource,
    QuestionGeneratorResource,
)
from embed_assets.evaluation.report import distributions_png
from embed_assets.index.chunk_index import ChunkIndex
from embed_assets.lineage import code_version, data_version
from embed_assets.quality.filters import filter_summary, score_pairs

SAMPLE_COLUMNS = (
    "question",
    "answer",
    "roundtrip_rank",
    "lexical_rank",
    "answer_support",
    "judge_overall",
    "ragas_faithfulness",
    "score",
    "kept",
    "drop_reason",
)


@dg.asset(
    pool=HOME_POOL,
    group_name="quality",
    kinds={"polars"},
    code_version=code_version(
        __name__,
        "embed_assets.quality.filters",
        "embed_assets.quality.judge",
        "embed_assets.quality.faithfulness",
        "embed_assets.index.lexical",
    ),
    description="A score per pair (round-trip rank of the base model, BM25 rank of the pairs it misses, "
    "answer support, LLM judge when one ran, "
    "ragas faithfulness when asked for), near-duplicate questions (cosine ≥ 0.9) marked, and a kept flag "
    "with the drop reason.",
)
def qa_quality_scores(
    context: dg.AssetExecutionContext,
    config: QAQualityConfig,
    synthetic_qa: pl.DataFrame,
    document_chunks: pl.DataFrame,
    base_chunk_index: dict,
    base_model: BaseModelResource,
    question_generator: QuestionGeneratorResource,
    store: ArtifactStoreResource,
) -> dg.MaterializeResult[pl.DataFrame]:
    start = time.perf_counter()
    index = ChunkIndex(base_chunk_index["uri"], base_chunk_index["table"])
    qa, judge_stats, ragas_stats = synthetic_qa, {}, {}
    cache = store.path("llm_cache.sqlite")
    # Before any call: fails fast, naming the field, when the backend has no LLM endpoint.
    faithfulness = question_generator.build_faithfulness(cache) if config.ragas_faithfulness else None
    judge = question_generator.build_judge(cache)
    if judge is not None:
        qa = judge.judge_pairs(qa, document_chunks)
        judge_stats = dict(judge.last_stats)
    if faithfulness is not None:
        qa = faithfulness.score(qa, document_chunks)
        ragas_stats = dict(faithfulness.last_stats)
    model = base_model.load()
    embeddings = base_embedding_cache(base_chunk_index, model)  # the miner and the evaluation reuse them
    embed = partial(embeddings.text_vectors, model=model) if embeddings else None
    scored = score_pairs(qa, document_chunks, model, index, config.to_core(), embed=embed)
    return dg.MaterializeResult(
        value=scored,
        data_version=dg.DataVersion(
            data_version(scored, {"quality": config.model_dump(), "judge": question_generator.model_dump()})
        ),
        metadata={
            "pairs": scored.height,
            "question_embeddings_reused": embeddings.reused if embeddings else 0,
            "question_embeddings_computed": embeddings.computed if embeddings else qa.height,
            **_score_metadata(
                scored, store.path("reports", context.run_id, "qa_quality_scores", "distributions.png")
            ),
            "judge": "on" if judge is not None else "off (no LLM endpoint)",
            "judge_stats": counts_table(judge_stats, key="counter"),
            **_judge_metadata(scored),
            "ragas_faithfulness": "on" if faithfulness is not None else "off",
            **(_ragas_metadata(scored, ragas_stats) if faithfulness is not None else {}),
            "sample_pairs": _sample_pairs(scored),
            **stage_metrics(start),
        },
    )


def _score_metadata(scored: pl.DataFrame, png_path: Path) -> dict:
    """What was kept and dropped, and the score distributions (a plot and histograms)."""
    summary = filter_summary(scored)
    judged = [("judge overall (1-10)", scored["judge_overall"].to_list(), True)] if _judged(scored) else []
    distributions = distributions_png(
        [
            ("round-trip rank", scored["roundtrip_rank"].to_list(), True),
            ("score", scored["score"].to_list(), False),
            *judged,
        ],
        title=f"{scored.height} pairs, {summary['kept']} kept",
    )
    return {
        "kept": summary["kept"],
        "kept_fraction": round(summary["kept"] / max(scored.height, 1), 3),
        "kept_by_lexical_only": summary["kept_by_lexical_only"],
        "dropped_by_reason": counts_table(summary["dropped"]),
        "roundtrip_rank_histogram": histogram(
            scored["roundtrip_rank"].to_list(), label="rank", whole_numbers=True
        ),
        **image(distributions, png_path, "score_distributions"),
        "score_histogram": histogram(scored["score"].to_list(), label="score"),
    }


def _judged(scored: pl.DataFrame) -> bool:
    return "judge_overall" in scored.columns


def _judge_metadata(scored: pl.DataFrame) -> dict:
    """The LLM judge's overall scores, when it ran."""
    if not _judged(scored):
        return {}
    overall = scored["judge_overall"].to_list()
    return {"judge_overall_histogram": histogram(overall, label="overall (1-10)", whole_numbers=True)}


def _ragas_metadata(scored: pl.DataFrame, stats: dict) -> dict:
    """ragas' counters and faithfulness scores."""
    return {
        "ragas_stats": counts_table(stats, key="counter"),
        "faithfulness_histogram": histogram(
            scored["ragas_faithfulness"].to_list(), label="faithfulness (0-1)"
        ),
    }


def _sample_pairs(scored: pl.DataFrame) -> dg.MetadataValue:
    """Ten pairs, seeded, with the columns a reviewer reads."""
    samples = scored.sample(min(10, scored.height), seed=0)
    return preview(samples.select([c for c in SAMPLE_COLUMNS if c in samples.columns]))
