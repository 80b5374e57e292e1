"""Stage 6: the recipe chosen for the corpus, its training rows and the fine-tuned bi-encoder."""

import time
from pathlib import Path

import dagster as dg
import polars as pl

from embed_assets.defs.assets.indexing import base_corpus_vectors
from embed_assets.defs.assets.teacher import teacher_cache
from embed_assets.defs.configs import TrainingRecipeConfig
from embed_assets.defs.metadata import image, preview, stage_metrics
from embed_assets.defs.provenance import previous_materialization, recorded_value, recorded_versions
from embed_assets.defs.resources import (
    HOME_POOL,
    ArtifactStoreResource,
    BaseModelResource,
    RecipeResource,
    TeacherResource,
)
from embed_assets.evaluation.labelled import LabelledQueriesError, labelled_queries_of
from embed_assets.evaluation.report import training_curves_png
from embed_assets.evaluation.retrieval import retrieve
from embed_assets.lineage import artifact_hashes, code_version, data_version
from embed_assets.models import load_model
from embed_assets.recipe.fine_tune import FineTuned, fine_tune, training_run_key
from embed_assets.recipe.presets import PRESETS, preset_training_rows
from embed_assets.recipe.selection import (
    SELECTED_ON,
    SELECTED_ON_LABELLED,
    SELECTED_ON_TEACHER,
    CorpusVectors,
    RecipeChoice,
    choose_recipe,
)
from embed_assets.recipe.settings import FinetunedModelSettings, TrainingExamplesSettings
from embed_assets.teacher.judged import agreement_with_source, teacher_judged_set
from embed_assets.training.trainer import (
    TrainingResult,
    ValidationSet,
    full_batches,
    saw_validation_documents,
)
from embed_assets.training.validation import (
    labelled_validation_set,
    validation_from_json,
    validation_set,
    validation_to_json,
)


def _settings(training_recipe: dict) -> dict:
    """The resolved training settings the ``training_recipe`` value hands on."""
    settings = training_recipe.get("settings") or {}
    if "finetuned_model" not in settings or "selection" not in training_recipe:
        raise ValueError(
            "training_recipe's stored value predates resolved settings; materialize training_recipe again "
            "(e.g. embed-assets run --select 'training_recipe*')"
        )
    return settings


def _selection_set(
    config: TrainingRecipeConfig,
    qa_splits: pl.DataFrame,
    document_chunks: pl.DataFrame,
    source_documents: pl.DataFrame,
    teacher: TeacherResource,
    store: ArtifactStoreResource,
    base: tuple[str, CorpusVectors | None],
) -> tuple[ValidationSet | None, dict]:
    """The validation set the recipe, the checkpoint and the merge weight are all chosen on, and
    what it is: held-out generated questions (judged by the teacher when there is one), or the
    labelled split the user set aside for it (in ``selection_queries_dir``). ``base`` is the base
    model's path and its cached vectors of chunks (a cross-encoder teacher reranks its hits)."""
    model, selection_queries_dir = config.finetuned_model, config.selection_queries_dir
    split = model.selection_queries_split
    if not split:
        val = validation_set(qa_splits, document_chunks, model.val_distractors, model.seed)
        if val is None or not (teacher.enabled and teacher.judge_choices):
            return val, {"selected_on": SELECTED_ON, "labelled_queries_used_for_selection": False}
        return _teacher_judged(val, teacher, store, base)
    # The settings' own check made sure the folder is set with the split.
    labelled = labelled_queries_of(selection_queries_dir, split, source_documents)
    val = labelled_validation_set(
        labelled.queries,
        labelled.qrels,
        document_chunks,
        model.val_distractors,
        model.seed,
        model.selection_corpus_chunks,
    )
    if val is None:
        raise LabelledQueriesError(f"{labelled.source}: no query's relevant documents have chunks")
    return val, {
        "selected_on": SELECTED_ON_LABELLED.format(source=labelled.source),
        "labelled_queries_used_for_selection": True,
        "selection_queries_fingerprint": labelled.fingerprint,
        "selection_queries": len(val.queries),
        "selection_corpus_chunks": len(val.corpus),
    }


def _teacher_judged(
    val: ValidationSet,
    teacher: TeacherResource,
    store: ArtifactStoreResource,
    base: tuple[str, CorpusVectors | None],
) -> tuple[ValidationSet, dict]:
    """``val`` judged by the teacher (its top-k chunks per question), and what that was."""
    model = teacher.load().with_embedding_cache(store.path("lancedb"))
    base_path, base_vectors = base

    def base_candidates(depth: int) -> dict:
        loaded = load_model(base_path)
        known = base_vectors(loaded, val.corpus) if base_vectors else None
        return retrieve(loaded, val.corpus, val.queries, depth, corpus_vectors=known)

    cache = teacher_cache(store)
    try:
        judged = teacher_judged_set(val, model, cache, teacher.judge_top_k, base_candidates)
    finally:
        cache.close()
    return judged, {
        "selected_on": SELECTED_ON_TEACHER.format(teacher=teacher.name_or_path, top_k=teacher.judge_top_k),
        "labelled_queries_used_for_selection": False,
        # the judgement decides the choices, so it enters the trained model's key
        "selection_judged_by": {"teacher": model.key, "top_k": teacher.judge_top_k},
        "teacher_top_k_holds_source_chunk": round(agreement_with_source(judged, val), 4),
    }


@dg.asset(
    pool=HOME_POOL,
    group_name="training",
    kinds={"pytorch"},
    code_version=code_version(__name__, "embed_assets.recipe.presets", "embed_assets.recipe.selection"),
    description="The recipe for this corpus: a named preset, or with 'auto' the preset whose short training "
    "best retrieves held-out generated questions of held-out documents (candidates and scores in metadata).",
)
def training_recipe(
    context: dg.AssetExecutionContext,
    config: TrainingRecipeConfig,
    base_chunk_index: dict,
    mined_negatives: pl.DataFrame,
    teacher_labels: pl.DataFrame,
    qa_splits: pl.DataFrame,
    document_chunks: pl.DataFrame,
    source_documents: pl.DataFrame,
    recipe: RecipeResource,
    base_model: BaseModelResource,
    teacher: TeacherResource,
    store: ArtifactStoreResource,
) -> dg.MaterializeResult[dict]:
    start = time.perf_counter()
    examples, model = config.training_examples, config.finetuned_model
    index_vectors = base_corpus_vectors(base_chunk_index, base_model.path())
    base = (base_model.path(), index_vectors)
    val, selection = _selection_set(
        config, qa_splits, document_chunks, source_documents, teacher, store, base
    )
    choice = choose_recipe(
        recipe.preset,
        recipe.candidates(),
        rows_for=lambda p: preset_training_rows(
            p, examples, mined_negatives, qa_splits, document_chunks, teacher_labels
        ).filter(pl.col("split") == "train"),
        config_for=model.to_core,
        base_model=base_model.path(),
        val=val,
        selection_steps=recipe.selection_steps,
        cache_dir=store.path("recipe_selection"),
        base_corpus_vectors=index_vectors,
        selected_on=selection["selected_on"],
        labelled_queries_used=selection["labelled_queries_used_for_selection"],
    )
    value = _recipe_value(choice, config, selection, val, teacher_labelled=teacher_labels.height > 0)
    scores = {c.preset: c.val_ndcg10 for c in choice.candidates}
    context.log.info("recipe %s: chose %s (%s) %s", recipe.preset, choice.chosen, choice.selected_on, scores)
    return dg.MaterializeResult(
        value=value,
        data_version=dg.DataVersion(_recipe_data_version(value)),
        metadata={**_recipe_metadata(choice, value, index_vectors is not None), **stage_metrics(start)},
    )


def _recipe_data_version(value: dict) -> str:
    """The version of what the choice decided, without how long each candidate took or whether its
    checkpoint was reused, so that a rerun on the same inputs gets the same version."""
    bookkeeping = ("seconds", "reused")
    candidates = [{k: v for k, v in c.items() if k not in bookkeeping} for c in value["candidates"]]
    return data_version({**value, "candidates": candidates})


def _recipe_value(
    choice: RecipeChoice,
    config: TrainingRecipeConfig,
    selection: dict,
    val: ValidationSet | None,
    teacher_labelled: bool,
) -> dict:
    """The asset's value: the choice, and the settings and validation set the next assets use."""
    chosen = PRESETS[choice.chosen]
    return {
        **choice.to_dict(),
        "generators": list(chosen.generators),
        # every setting training_examples and finetuned_model use: the user's, the rest the recipe's
        "settings": config.resolved(chosen, teacher_labelled=teacher_labelled),
        # the set the choices were made on, and what it is: finetuned_model chooses its checkpoint
        # and merge weight on the same set, without building it (and asking the teacher) again
        "selection": selection,
        "validation_set": validation_to_json(val),
    }


def _recipe_metadata(choice: RecipeChoice, value: dict, base_val_vectors_from_index: bool) -> dict:
    """What was asked for and chosen, on what, each candidate's score, and the chosen settings."""
    return {
        "requested": choice.requested,
        "chosen": choice.chosen,
        **value["selection"],
        "selected_on": choice.selected_on,  # what decided: also "named by the user", "no validation split"
        # the base model's validation chunks come from the index's embedding cache
        "base_val_vectors_from_index": base_val_vectors_from_index,
        **{f"val_ndcg10_{c.preset}": c.val_ndcg10 for c in choice.candidates if c.val_ndcg10 is not None},
        "candidates": dg.MetadataValue.md(_candidates_table(choice)),
        "chosen_settings": dg.MetadataValue.json(value["settings"]),
        "evidence": PRESETS[choice.chosen].evidence,
    }


def _candidates_table(choice) -> str:
    if not choice.candidates:
        return f"{choice.chosen}: {choice.selected_on}"
    lines = [
        "| preset | val nDCG@10 | base val nDCG@10 | steps | train rows | seconds | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in choice.candidates:
        mark = " (chosen)" if c.preset == choice.chosen else ""
        lines.append(
            f"| {c.preset}{mark} | {c.val_ndcg10} | {c.base_val_ndcg10} | {c.steps} | {c.train_rows} | "
            f"{c.seconds}{' (reused)' if c.reused else ''} | {c.note} |"
        )
    return "\n".join(lines)


@dg.asset(
    pool=HOME_POOL,
    group_name="training",
    kinds={"polars"},
    code_version=code_version(__name__, "embed_assets.training.examples"),
    description="One (anchor, positive, hard negatives) row per positive of the chosen recipe's questions "
    "(train split, and validation for a refit): multi-positive queries are unrolled.",
    check_specs=[dg.AssetCheckSpec("enough_examples_for_batch", asset="training_examples", blocking=True)],
)
def training_examples(
    training_recipe: dict,
    mined_negatives: pl.DataFrame,
    teacher_labels: pl.DataFrame,
    document_chunks: pl.DataFrame,
    qa_splits: pl.DataFrame,
    store: ArtifactStoreResource,  # unused here: every asset requires the home's claim (resources.py)
):  # no return annotation: with check specs Dagster would read it as a multi-output tuple
    start = time.perf_counter()
    preset = PRESETS[training_recipe["chosen"]]
    resolved = _settings(training_recipe)
    settings, trainer = resolved["training_examples"], resolved["finetuned_model"]
    config = TrainingExamplesSettings(**settings)
    rows = preset_training_rows(preset, config, mined_negatives, qa_splits, document_chunks, teacher_labels)
    train = rows.filter(pl.col("split") == "train")
    # The trainer's own rule: full batches in which no text repeats, at the trainer's seed.
    batch_size = config.batch_size or trainer["batch_size"]
    batches = full_batches(train, batch_size, trainer["seed"])
    return dg.MaterializeResult(
        value=rows,
        data_version=dg.DataVersion(data_version(rows, settings)),
        metadata={
            "recipe": preset.name,
            "negatives_per_example": settings["negatives_per_example"],
            "rows": train.height,
            "val_rows": rows.height - train.height,
            "queries": train["qa_id"].n_unique(),
            "unrolled_extra_rows": train.height - train["qa_id"].n_unique(),
            "dropped_queries_short_of_negatives": mined_negatives.height - rows["qa_id"].n_unique(),
            "rows_without_title_header": int(rows["untitled"].sum()),
            "full_batches_without_repeats": batches,
            **_teacher_metadata(rows),
            "preview": preview(
                train.drop(
                    "qa_id", "positive_id", "split", "untitled", "false_negatives_dropped", strict=False
                )
            ),
            **stage_metrics(start),
        },
        check_results=[_batch_check(train, batches, batch_size, config.min_batches)],
    )


def _teacher_metadata(rows: pl.DataFrame) -> dict:
    """Whether the teacher labelled the rows: the false negatives it dropped, its mean margin."""
    if "label" not in rows.columns:
        return {"teacher_labelled": False}
    return {
        "teacher_labelled": True,
        "false_negatives_dropped": int(rows["false_negatives_dropped"].sum()),
        "teacher_margin_mean": round(float(rows["label"].explode().mean() or 0.0), 4),
    }


def _batch_check(train: pl.DataFrame, batches: int, batch_size: int, min_batches: int) -> dg.AssetCheckResult:
    """Enough full batches without a repeated text for the trainer."""
    return dg.AssetCheckResult(
        check_name="enough_examples_for_batch",
        passed=batches >= min_batches,
        metadata={
            "rows": train.height,
            "full_batches": batches,
            "needed_batches": min_batches,
            "batch_size": batch_size,
        },
        description=f"{train.height} rows fill {batches} batches of {batch_size} in which "
        f"no text repeats (the trainer's sampler); training needs ≥ {min_batches}",
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


def _model_lineage(
    context: dg.AssetExecutionContext,
    recipe: str,
    init_model: str,
    start_from: str | None,
    refit: bool,
    selection: dict,
) -> tuple[dict, bool]:
    """What the model card and the asset value record about where the model came from, and
    whether its validation scores are optimistic (a warm start from a model that refit)."""
    # Splits are stable, so a warm start meets only its own earlier train documents in training; but
    # a model that refit has learned the validation documents, and would flatter itself on them.
    validation_optimistic = bool(start_from) and saw_validation_documents(start_from)
    if validation_optimistic:
        context.log.warning(
            "warm start from a model that trained on validation questions (a refit): this run's checkpoint "
            "and merge choices are made on documents it has seen, so its validation scores are optimistic"
        )
    recorded = recorded_versions(context, "training_examples", "qa_splits", "training_recipe")
    return {
        "training_examples_version": recorded["training_examples"],
        "qa_splits_version": recorded["qa_splits"],
        "training_recipe_version": recorded["training_recipe"],
        "recipe": recipe,
        "dagster_run_id": context.run_id,
        "started_from": init_model,
        "saw_validation_documents": refit or validation_optimistic,
        "model_selected_on": selection["selected_on"],
        "labelled_queries_used_for_selection": selection["labelled_queries_used_for_selection"],
    }, validation_optimistic


def _log_training(context: dg.AssetExecutionContext, recipe: str, trained: FineTuned, out_dir: Path) -> None:
    result = trained.result
    if trained.reused:
        context.log.info("reusing %s: trained before on the same data, config and base model", out_dir)
    if trained.resumed:
        context.log.info("resumed from recipe selection's checkpoint at step %s", result.resumed_from_step)
    context.log.info(
        "recipe %s: trained %d steps at %.2f examples/s; val nDCG@10 base %s -> %s (merge %.2f)%s",
        recipe,
        result.steps,
        result.examples_per_second,
        result.base_val_ndcg10,
        result.best_val_ndcg10,
        result.merge_weight,
        f"; refit on {result.refit['rows']} rows" if result.refit else "",
    )


def _model_metadata(trained: FineTuned, out_dir: Path, settings: dict) -> dict:
    """The trained model's metadata: where it is, its files' hashes, how training went."""
    result = trained.result
    return {
        "path": dg.MetadataValue.path(str(out_dir.resolve())),
        "reused_trained_model": trained.reused,
        "artifacts": dg.MetadataValue.json(artifact_hashes(out_dir)),
        "steps": result.steps,
        "selected_step": result.best_step or result.steps,
        "resumed_from_selection_step": result.resumed_from_step or 0,
        "train_rows": result.train_rows,
        "refit": bool(result.refit),
        "refit_rows": (result.refit or {}).get("rows", 0),
        "examples_per_second": result.examples_per_second,
        "train_seconds": result.train_seconds,
        "device": result.device,
        "val_ndcg10_base": result.base_val_ndcg10,
        "val_ndcg10_selected": result.best_val_ndcg10,
        "merge_weight": result.merge_weight,
        "merge_candidates": dg.MetadataValue.json(result.merge_candidates),
        "training_config": dg.MetadataValue.json(settings),
    }


@dg.asset(
    pool=HOME_POOL,
    group_name="training",
    kinds={"pytorch"},
    code_version=code_version(
        __name__,
        "embed_assets.training.trainer",
        "embed_assets.training.validation",
        "embed_assets.recipe.fine_tune",
    ),
    description="The base model fine-tuned contrastively with the chosen recipe (in-batch + hard negatives, "
    "warmup then cosine), best checkpoint and merge with the base chosen on validation, then (refit) "
    "retrained on train + validation questions with those choices; saved with a model card.",
)
def finetuned_model(
    context: dg.AssetExecutionContext,
    training_recipe: dict,
    training_examples: pl.DataFrame,
    qa_splits: pl.DataFrame,
    base_model: BaseModelResource,
    store: ArtifactStoreResource,
) -> dg.MaterializeResult[dict]:
    start = time.perf_counter()
    preset = PRESETS[training_recipe["chosen"]]
    settings = _settings(training_recipe)["finetuned_model"]  # set fields, the rest the recipe's
    config = FinetunedModelSettings(**settings)
    core = config.to_core(preset)
    start_from = _warm_start_model(context) if config.warm_start else None
    init_model = start_from or base_model.path()
    train = training_examples.filter(pl.col("split") == "train")
    val, selection = validation_from_json(training_recipe["validation_set"]), training_recipe["selection"]
    refit = bool(settings["refit"]) and val is not None and train.height < training_examples.height
    run_key = training_run_key(training_examples, qa_splits, settings, refit, init_model, selection)
    out_dir = store.path("models", f"finetuned-{run_key}")
    lineage, validation_optimistic = _model_lineage(
        context, preset.name, init_model, start_from, refit, selection
    )
    trained = fine_tune(
        init_model,
        training_examples,
        val,
        core,
        out_dir,
        refit=refit,
        selection_cache=store.path("recipe_selection"),
        card=lineage,
    )
    _log_training(context, preset.name, trained, out_dir)
    return dg.MaterializeResult(
        value=_model_value(out_dir, base_model.path(), lineage, trained, val, selection),
        data_version=dg.DataVersion(run_key),
        metadata={
            **_model_metadata(trained, out_dir, settings),
            "recipe": preset.name,
            "validation_optimistic": validation_optimistic,
            **_training_curves(trained.result, store, context.run_id),
            **lineage,
            **stage_metrics(start),
        },
    )


def _model_value(
    out_dir: Path,
    base_model: str,
    lineage: dict,
    trained: FineTuned,
    val: ValidationSet | None,
    selection: dict,
) -> dict:
    """The asset's value: where the model is, where it came from, and the queries that chose it."""
    return {
        "path": str(out_dir.resolve()),
        "base_model": base_model,
        **lineage,
        "steps": trained.result.steps,
        # the labelled queries that chose this model, so a later evaluation leaves them out
        "selection_query_texts": dict(val.queries)
        if selection["labelled_queries_used_for_selection"]
        else {},
    }


def _training_curves(result: TrainingResult, store: ArtifactStoreResource, run_id: str) -> dict:
    """The trainer's log history (also in embed_assets_training.json beside the model) as curves."""
    curves = training_curves_png(result.history)
    png_path = store.path("reports", run_id, "finetuned_model", "training_curves.png")
    return image(curves, png_path, "training_curves") if curves else {}
