"""Stage 2: synthetic questions for the chunks."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.configs import SyntheticQAConfig
from embed_assets.defs.metadata import counts_table, preview, stage_metrics
from embed_assets.defs.provenance import input_materialization, previous_materialization, recorded_value
from embed_assets.defs.resources import (
    HOME_POOL,
    ArtifactStoreResource,
    QuestionGeneratorResource,
    RecipeResource,
)
from embed_assets.generation.incremental import IncrementalPlan, plan_incremental
from embed_assets.hashing import stable_hash
from embed_assets.lineage import code_version, data_version
from embed_assets.llm.prompts import prompts_version
from embed_assets.recipe.presets import fill, preset_for_generator


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
    pool=HOME_POOL,
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
        "embed_assets.llm.prompts",
        "embed_assets.generation.incremental",
    )
    + "-"
    + prompts_version(),
    description="Questions written for the chunks by the recipe's generator(s) (or the configured one), "
    "single-hop and multi-hop, each with the chunk id(s) that answer it and a one-line context per hop.",
)
def synthetic_qa(
    context: dg.AssetExecutionContext,
    config: SyntheticQAConfig,
    document_chunks: pl.DataFrame,
    question_generator: QuestionGeneratorResource,
    recipe: RecipeResource,
    store: ArtifactStoreResource,
) -> dg.MaterializeResult[pl.DataFrame]:
    start = time.perf_counter()
    chunks = document_chunks
    if config.max_chunks and chunks.height > config.max_chunks:
        chunks = chunks.sample(config.max_chunks, seed=config.seed).sort(["doc_path", "chunk_index"])
    # The backend the user set, else every generator the recipe may train on (auto: all presets').
    backends = (
        recipe.generators() if question_generator.backend == "recipe" else (question_generator.backend,)
    )
    settings = {
        "synthetic_qa": config.model_dump(),
        "generator": question_generator.model_dump(),
        "backends": backends,
    }
    recipe_hash = stable_hash(settings)
    plan = _incremental_plan(context, config, recipe_hash, chunks)
    todo = plan.to_generate if plan is not None else chunks
    qa, stats, names = _generate(config, question_generator, store, backends, todo)
    if plan is not None:
        qa = pl.concat([plan.reused, qa])
    qa = qa.unique("qa_id", keep="first", maintain_order=True)
    if qa.height == 0:
        raise ValueError(
            f"generator {', '.join(names)} wrote no question for {chunks.height} chunks: {stats}"
        )
    seconds = time.perf_counter() - start
    return dg.MaterializeResult(
        value=qa,
        data_version=dg.DataVersion(data_version(qa, settings)),
        metadata={
            **_questions_metadata(qa, names, chunks),
            **_generation_metadata(stats, plan, todo, recipe_hash),
            "preview": preview(qa.select("question", "query_type", "hops", "positive_chunk_ids")),
            "records_per_second": round(qa.height / max(seconds, 1e-9), 1),
            **stage_metrics(start),
        },
    )


def _generate(
    config: SyntheticQAConfig,
    question_generator: QuestionGeneratorResource,
    store: ArtifactStoreResource,
    backends: tuple[str, ...],
    chunks: pl.DataFrame,
) -> tuple[pl.DataFrame, dict, list[str]]:
    """Every backend's questions for ``chunks``, their counters summed, and the generators' names."""
    frames, stats, names = [], {}, []
    for backend in backends:
        generator = question_generator.build(store.path("llm_cache.sqlite"), backend)
        per_chunk = fill("synthetic_qa", config.model_dump(), preset_for_generator(backend))
        try:
            result = generator.generate(
                chunks,
                questions_per_chunk=per_chunk["questions_per_chunk"],
                multi_hop_questions=config.multi_hop_questions,
                seed=config.seed,
            )
        finally:
            if hasattr(generator, "close"):  # the embedded model's child process
                generator.close()
        frames.append(result.qa)
        names.append(generator.name)
        for k, v in result.stats.items():
            stats[k] = stats.get(k, 0) + v if isinstance(v, int | float) else v
    return (pl.concat(frames) if frames else pl.DataFrame()), stats, names


def _questions_metadata(qa: pl.DataFrame, names: list[str], chunks: pl.DataFrame) -> dict:
    """Who wrote how many questions, of which kinds, for how many chunks."""
    by_type = qa.group_by("query_type").len().sort("query_type")
    return {
        "generator": ", ".join(names),
        "questions_by_generator": counts_table(
            dict(qa.group_by("generator").len().iter_rows()), key="generator"
        ),
        "questions": qa.height,
        "chunks_used": chunks.height,
        "multi_hop": int((qa["hops"] > 1).sum()),
        "by_query_type": counts_table(dict(by_type.iter_rows()), key="query_type"),
    }


def _generation_metadata(
    stats: dict, plan: IncrementalPlan | None, todo: pl.DataFrame, recipe_hash: str
) -> dict:
    """The generators' counters, and what an incremental run reused, dropped and generated."""
    return {
        "generator_stats": counts_table(stats, key="counter"),
        "llm_calls": int(stats.get("llm_calls", 0)),
        "incremental": plan is not None,
        "chunks_generated_for": todo.height,
        "questions_reused": plan.reused.height if plan is not None else 0,
        "questions_dropped_with_their_chunks": plan.dropped if plan is not None else 0,
        "recipe_hash": recipe_hash,
        "cache_hits": int(stats.get("cache_hits", 0)),
    }
