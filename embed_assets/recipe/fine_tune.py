"""Fine-tune with the chosen recipe: the ``finetuned_model`` stage, Dagster-free.

Nothing is trained twice. A model is named by everything that decides its weights
(:func:`training_run_key`), so a rerun on the same rows, validation split, settings and starting
weights reuses the finished model; recipe selection already ran the first steps of this very
training and kept their checkpoint, so training finishes from there; and a recipe that refits
uses a first training only to choose the step count and the merge weight, then trains every
question with them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from embed_assets.hashing import stable_hash
from embed_assets.index.chunk_index import model_key
from embed_assets.lineage import data_version
from embed_assets.recipe.selection import base_validation_score, drop_checkpoint, resume_checkpoint
from embed_assets.training.trainer import (
    TrainingConfig,
    TrainingResult,
    ValidationSet,
    finished_training,
    refit_bi_encoder,
    train_bi_encoder,
)


def training_run_key(
    examples: pl.DataFrame,
    qa_splits: pl.DataFrame,
    settings: dict,
    refit: bool,
    init_model: str,
    selection: dict,
) -> str:
    """A hash of everything that decides the weights: the rows, the validation split that picks
    the checkpoint and merge, the settings, whether it refits and the weights it starts from;
    plus, when they choose, the labelled queries' content or the teacher that judges (a default
    run's key has neither)."""
    key = {
        "data": data_version(examples),
        "validation": data_version(qa_splits.filter(pl.col("split") == "val")),
        "config": settings,
        "refit": refit,
        "base": model_key(init_model),
    }
    if selection.get("labelled_queries_used_for_selection"):
        key["selection"] = selection["selection_queries_fingerprint"]
    if "selection_judged_by" in selection:
        key["judge"] = selection["selection_judged_by"]
    return stable_hash(key)


@dataclass(frozen=True)
class FineTuned:
    """What :func:`fine_tune` did.

    Attributes:
        result: the trainer's result (steps, validation scores, merge weight, refit rows).
        reused: a model trained before on the same inputs was found and kept.
        resumed: training finished from recipe selection's checkpoint.
    """

    result: TrainingResult
    reused: bool
    resumed: bool


def fine_tune(
    init_model: str,
    examples: pl.DataFrame,
    val: ValidationSet | None,
    config: TrainingConfig,
    out_dir: Path,
    *,
    refit: bool,
    selection_cache: Path,
    card: dict,
) -> FineTuned:
    """Train ``init_model`` on ``examples`` into ``out_dir`` (or reuse what is there).

    Args:
        init_model: the weights training starts from (the base model, or a warm start).
        examples: training rows; ``split`` is ``train`` or ``val`` (validation rows train only
            when ``refit``).
        val: the set the checkpoint and merge weight are chosen on; None trains without.
        config: the resolved trainer settings.
        out_dir: the model folder, named by :func:`training_run_key`.
        refit: choose steps and merge weight on a first training of the train rows, then train
            all rows with them (the first model is deleted).
        selection_cache: recipe selection's cache (its checkpoint and the base model's score).
        card: lineage written into the model card.
    """
    if (done := finished_training(out_dir)) is not None:
        return FineTuned(done, reused=True, resumed=False)
    train = examples.filter(pl.col("split") == "train")
    resume_from = resume_checkpoint(selection_cache, train, config, init_model, val)
    base_val = base_validation_score(init_model, val, selection_cache) if val else None
    if not refit:
        result = train_bi_encoder(
            init_model,
            train,
            out_dir,
            config,
            val=val,
            card=card,
            base_val_ndcg10=base_val,
            resume_from=resume_from,
        )
    else:
        selection_dir = out_dir.with_name(f"{out_dir.name}.selection")  # deleted once it has chosen
        selected = train_bi_encoder(
            init_model,
            train,
            selection_dir,
            config,
            val=val,
            base_val_ndcg10=base_val,
            resume_from=resume_from,
        )
        shutil.rmtree(selection_dir, ignore_errors=True)
        result = refit_bi_encoder(init_model, examples, out_dir, config, selected, card=card)
    if resume_from is not None:
        drop_checkpoint(resume_from)  # the finished model supersedes it
    return FineTuned(result, reused=False, resumed=resume_from is not None)
