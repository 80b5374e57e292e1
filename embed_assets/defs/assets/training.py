"""Stage 6: training rows and the fine-tuned bi-encoder."""

import time
from pathlib import Path

import dagster as dg
import polars as pl

from embed_assets.defs.configs import FinetunedModelConfig, TrainingExamplesConfig
from embed_assets.defs.metadata import image, preview, stage_metrics
from embed_assets.defs.provenance import previous_materialization, recorded_value, recorded_versions
from embed_assets.defs.resources import ArtifactStoreResource, BaseModelResource
from embed_assets.evaluation.report import training_curves_png
from embed_assets.generation.structure import StructureQuestionGenerator, strip_title
from embed_assets.hashing import stable_hash
from embed_assets.lineage import artifact_hashes, code_version, data_version
from embed_assets.mining.index import model_key
from embed_assets.training.examples import unroll_examples
from embed_assets.training.trainer import ValidationSet, finished_training, full_batches, train_bi_encoder


def _op_config(context: dg.AssetExecutionContext, asset: str) -> dict:
    """Another asset's config as this run gives it (its defaults when the run gives none)."""
    ops = (context.run.run_config or {}).get("ops") or {}
    return (ops.get(asset) or {}).get("config") or {}


@dg.asset(
    group_name="training",
    kinds={"polars"},
    code_version=code_version(__name__, "embed_assets.training.examples"),
    description="One (anchor, positive, hard negatives) row per positive: multi-positive queries are unrolled.",
    check_specs=[dg.AssetCheckSpec("enough_examples_for_batch", asset="training_examples", blocking=True)],
)
def training_examples(
    context: dg.AssetExecutionContext,
    config: TrainingExamplesConfig,
    mined_negatives: pl.DataFrame,
    document_chunks: pl.DataFrame,
    qa_splits: pl.DataFrame,
):  # no return annotation: with check specs Dagster would read it as a multi-output tuple
    start = time.perf_counter()
    ids, texts, titles = (document_chunks[c].to_list() for c in ("chunk_id", "text", "title"))
    text = dict(zip(ids, texts, strict=True))
    untitled = {c: strip_title(t, ti or "") for c, t, ti in zip(ids, texts, titles, strict=True)}
    if config.strip_title_headers == "always":
        untitled_qa = set(mined_negatives["qa_id"])
    elif config.strip_title_headers == "auto":
        untitled_qa = set(qa_splits.filter(pl.col("generator") == StructureQuestionGenerator.name)["qa_id"])
    else:
        untitled_qa = set()
    rows = unroll_examples(
        mined_negatives,
        text,
        config.negatives_per_example,
        untitled_text=untitled,
        untitled_qa_ids=untitled_qa,
    )
    # The trainer's own rule: full batches in which no text repeats, at the trainer's seed.
    trainer_config = FinetunedModelConfig(**_op_config(context, "finetuned_model"))
    batch_size = config.batch_size or trainer_config.batch_size
    batches = full_batches(rows, batch_size, trainer_config.seed)
    return dg.MaterializeResult(
        value=rows,
        data_version=dg.DataVersion(data_version(rows, config)),
        metadata={
            "rows": rows.height,
            "queries": rows["qa_id"].n_unique(),
            "unrolled_extra_rows": rows.height - rows["qa_id"].n_unique(),
            "dropped_queries_short_of_negatives": mined_negatives.height - rows["qa_id"].n_unique(),
            "rows_without_title_header": int(rows["qa_id"].is_in(list(untitled_qa)).sum()),
            "full_batches_without_repeats": batches,
            "preview": preview(rows.drop("qa_id", "positive_id")),
            **stage_metrics(start),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="enough_examples_for_batch",
                passed=batches >= config.min_batches,
                metadata={
                    "rows": rows.height,
                    "full_batches": batches,
                    "needed_batches": config.min_batches,
                    "batch_size": batch_size,
                },
                description=f"{rows.height} rows fill {batches} batches of {batch_size} in which "
                f"no text repeats (the trainer's sampler); training needs ≥ {config.min_batches}",
            )
        ],
    )


def _warm_start_model(context: dg.AssetExecutionContext) -> str | None:
    """The fine-tuned model the last ONNX export was made from (it passed the no-regression gate),
    when its folder still exists; None sends training back to the base."""
    exported = recorded_value(previous_materialization(context, "onnx_model"))
    path = exported.get("finetuned_model") if isinstance(exported, dict) else None
    if path and Path(path, "modules.json").is_file():
        context.log.info("warm start from %s", path)
        return path
    context.log.warning("warm_start: no earlier exported model on disk; training starts from the base")
    return None


def _validation_set(
    qa_splits: pl.DataFrame, chunks: pl.DataFrame, distractors: int, seed: int
) -> ValidationSet | None:
    val = qa_splits.filter(pl.col("split") == "val")
    if val.height == 0:
        return None
    positives = {c for ids in val["positive_chunk_ids"] for c in ids}
    others = chunks.filter(~pl.col("chunk_id").is_in(list(positives)))
    sample = others.sample(min(distractors, others.height), seed=seed)
    corpus_rows = chunks.filter(pl.col("chunk_id").is_in(list(positives)))
    corpus = dict(zip(corpus_rows["chunk_id"], corpus_rows["text"], strict=True))
    corpus.update(zip(sample["chunk_id"], sample["text"], strict=True))
    return ValidationSet(
        queries=dict(zip(val["qa_id"], val["question"], strict=True)),
        corpus=corpus,
        relevant={q: set(p) for q, p in zip(val["qa_id"], val["positive_chunk_ids"], strict=True)},
    )


@dg.asset(
    group_name="training",
    kinds={"pytorch"},
    code_version=code_version(__name__, "embed_assets.training.trainer"),
    description="The base model fine-tuned contrastively (in-batch + hard negatives, temperature 0.02, "
    "warmup then cosine), best checkpoint on validation, optional merge with the base; saved with a model card.",
)
def finetuned_model(
    context: dg.AssetExecutionContext,
    config: FinetunedModelConfig,
    training_examples: pl.DataFrame,
    qa_splits: pl.DataFrame,
    document_chunks: pl.DataFrame,
    base_model: BaseModelResource,
    store: ArtifactStoreResource,
) -> dg.MaterializeResult[dict]:
    start = time.perf_counter()
    core = config.to_core()
    start_from = _warm_start_model(context) if config.warm_start else None
    init_model = start_from or base_model.path()
    # Everything that decides the weights: the rows, the validation split that picks the
    # checkpoint and merge, the config and the weights training starts from.
    run_key = stable_hash(
        {
            "data": data_version(training_examples),
            "validation": data_version(qa_splits.filter(pl.col("split") == "val")),
            "config": config.model_dump(),
            "base": model_key(init_model),
        }
    )
    out_dir = store.path("models", f"finetuned-{run_key}")
    val = _validation_set(qa_splits, document_chunks, config.val_distractors, config.seed)
    recorded = recorded_versions(context, "training_examples", "qa_splits")
    lineage = {
        "training_examples_version": recorded["training_examples"],
        "qa_splits_version": recorded["qa_splits"],
        "dagster_run_id": context.run_id,
        "started_from": init_model,
    }
    result = finished_training(out_dir)
    reused = result is not None
    if result is None:
        result = train_bi_encoder(init_model, training_examples, out_dir, core, val=val, card=lineage)
    else:
        context.log.info("reusing %s: trained before on the same data, config and base model", out_dir)
    context.log.info(
        "trained %d steps at %.2f examples/s; val nDCG@10 base %s -> %s (merge %.2f)",
        result.steps,
        result.examples_per_second,
        result.base_val_ndcg10,
        result.best_val_ndcg10,
        result.merge_weight,
    )
    # The trainer's log history (also in embed_assets_training.json beside the model) as curves.
    curves = training_curves_png(result.history)
    png_path = store.path("reports", context.run_id, "finetuned_model", "training_curves.png")
    report = image(curves, png_path, "training_curves") if curves else {}
    return dg.MaterializeResult(
        value={
            "path": str(out_dir.resolve()),
            "base_model": base_model.path(),
            **lineage,
            "steps": result.steps,
        },
        data_version=dg.DataVersion(run_key),
        metadata={
            "path": dg.MetadataValue.path(str(out_dir.resolve())),
            "reused_trained_model": reused,
            "artifacts": dg.MetadataValue.json(artifact_hashes(out_dir)),
            "steps": result.steps,
            "train_rows": result.train_rows,
            "examples_per_second": result.examples_per_second,
            "train_seconds": result.train_seconds,
            "device": result.device,
            "val_ndcg10_base": result.base_val_ndcg10,
            "val_ndcg10_selected": result.best_val_ndcg10,
            "merge_weight": result.merge_weight,
            "merge_candidates": dg.MetadataValue.json(result.merge_candidates),
            "training_config": dg.MetadataValue.json(config.model_dump()),
            **report,
            **lineage,
            **stage_metrics(start),
        },
    )
