"""Stage 2: synthetic questions for the chunks."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.configs import SyntheticQAConfig
from embed_assets.defs.metadata import counts_table, preview, stage_metrics
from embed_assets.defs.resources import ArtifactStoreResource, QuestionGeneratorResource
from embed_assets.generation.prompts import prompts_version
from embed_assets.lineage import code_version, data_version


@dg.asset(
    group_name="generation",
    kinds={"polars"},
    # The generators' code, prompts included: a changed prompt is a changed asset.
    code_version=code_version(
        __name__,
        "embed_assets.generation.base",
        "embed_assets.generation.template",
        "embed_assets.generation.structure",
        "embed_assets.generation.llm_generator",
        "embed_assets.generation.embedded_llm",
        "embed_assets.generation.prompts",
    )
    + "-"
    + prompts_version(),
    description="Questions written for the chunks by the configured generator, single-hop and multi-hop, "
    "each with the chunk id(s) that answer it and a one-line context per hop.",
)
def synthetic_qa(
    context: dg.AssetExecutionContext,
    config: SyntheticQAConfig,
    document_chunks: pl.DataFrame,
    question_generator: QuestionGeneratorResource,
    store: ArtifactStoreResource,
) -> dg.MaterializeResult[pl.DataFrame]:
    start = time.perf_counter()
    chunks = document_chunks
    if config.max_chunks and chunks.height > config.max_chunks:
        chunks = chunks.sample(config.max_chunks, seed=config.seed).sort(["doc_path", "chunk_index"])
    generator = question_generator.build(store.path("llm_cache.sqlite"))
    try:
        result = generator.generate(
            chunks,
            questions_per_chunk=config.questions_per_chunk,
            multi_hop_questions=config.multi_hop_questions,
            seed=config.seed,
        )
    finally:
        if hasattr(generator, "close"):  # the embedded model's child process
            generator.close()
    qa = result.qa
    if qa.height == 0:
        raise ValueError(
            f"generator {generator.name} wrote no question for {chunks.height} chunks: {result.stats}"
        )
    seconds = time.perf_counter() - start
    by_type = qa.group_by("query_type").len().sort("query_type")
    return dg.MaterializeResult(
        value=qa,
        data_version=dg.DataVersion(
            data_version(
                qa, {"synthetic_qa": config.model_dump(), "generator": question_generator.model_dump()}
            )
        ),
        metadata={
            "generator": generator.name,
            "questions": qa.height,
            "chunks_used": chunks.height,
            "multi_hop": int((qa["hops"] > 1).sum()),
            "by_query_type": counts_table(dict(by_type.iter_rows()), key="query_type"),
            "generator_stats": counts_table(result.stats, key="counter"),
            "llm_calls": int(result.stats.get("llm_calls", 0)),
            "cache_hits": int(result.stats.get("cache_hits", 0)),
            "preview": preview(qa.select("question", "query_type", "hops", "positive_chunk_ids")),
            "records_per_second": round(qa.height / max(seconds, 1e-9), 1),
            **stage_metrics(start),
        },
    )
