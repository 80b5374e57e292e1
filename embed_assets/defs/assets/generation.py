"""Stage 2: synthetic questions for the chunks."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.configs import SyntheticQAConfig
from embed_assets.defs.metadata import counts_table, preview, stage_metrics
from embed_assets.defs.provenance import input_materialization, previous_materialization, recorded_value
from embed_assets.defs.resources import ArtifactStoreResource, QuestionGeneratorResource
from embed_assets.generation.incremental import IncrementalPlan, plan_incremental
from embed_assets.generation.prompts import prompts_version
from embed_assets.hashing import stable_hash
from embed_assets.lineage import code_version, data_version


def _incremental_plan(
    context: dg.AssetExecutionContext, config: SyntheticQAConfig, recipe: str, chunks: pl.DataFrame
) -> IncrementalPlan | None:
    """What the previous materialization already wrote, when it can be reused: same recipe, no
    sampling, and both its questions and the chunks it read still on disk."""
    if not config.incremental or config.max_chunks:
        return None
    previous = previous_materialization(context, "synthetic_qa")
    meta = previous.asset_materialization.metadata if previous is not None else {}
    if "recipe_hash" not in meta or meta["recipe_hash"].value != recipe:
        return None
    previous_qa = recorded_value(previous)
    previous_chunks = recorded_value(input_materialization(context, previous, "document_chunks"))
    if previous_qa is None or previous_chunks is None:
        return None
    plan = plan_incremental(previous_qa, set(previous_chunks["chunk_id"]), chunks)
    context.log.info(
        "incremental: %d questions reused, %d dropped with their chunks, %d new chunks to generate for",
        plan.reused.height,
        plan.dropped,
        plan.to_generate.height,
    )
    return plan


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
        "embed_assets.generation.incremental",
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
    recipe = stable_hash({"synthetic_qa": config.model_dump(), "generator": question_generator.model_dump()})
    plan = _incremental_plan(context, config, recipe, chunks)
    generator = question_generator.build(store.path("llm_cache.sqlite"))
    todo = plan.to_generate if plan is not None else chunks
    try:
        result = generator.generate(
            todo,
            questions_per_chunk=config.questions_per_chunk,
            multi_hop_questions=config.multi_hop_questions,
            seed=config.seed,
        )
    finally:
        if hasattr(generator, "close"):  # the embedded model's child process
            generator.close()
    qa = result.qa
    if plan is not None:
        qa = pl.concat([plan.reused, qa]).unique("qa_id", keep="first", maintain_order=True)
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
            "incremental": plan is not None,
            "chunks_generated_for": todo.height,
            "questions_reused": plan.reused.height if plan is not None else 0,
            "questions_dropped_with_their_chunks": plan.dropped if plan is not None else 0,
            "recipe_hash": recipe,
            "cache_hits": int(result.stats.get("cache_hits", 0)),
            "preview": preview(qa.select("question", "query_type", "hops", "positive_chunk_ids")),
            "records_per_second": round(qa.height / max(seconds, 1e-9), 1),
            **stage_metrics(start),
        },
    )
