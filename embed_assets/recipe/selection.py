"""Choose the recipe for a corpus by validation, the way checkpoints and merge weights are chosen.

No labelled query is needed: each candidate preset runs the first few steps of its own training
(its rows: the train split's questions of its generators; its schedule: warmup and decay planned
for all of its steps), and all candidates are scored on the same held-out *generated* questions of
held-out documents (the val split, every generator's questions); the base model is scored once for
all. The best nDCG@10 wins; a tie keeps the earlier preset. A user who holds labelled queries may
set a split of them aside for choosing (``selection_queries_split``); the validation set is then
those queries (:func:`embed_assets.training.validation.labelled_validation_set`) and the choice
records that it read them.

Nothing is spent twice: scores are cached by everything that decides them, and the winner keeps
a resumable checkpoint that ``finetuned_model`` finishes from (:func:`resume_checkpoint`) instead
of training those first steps again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from embed_assets.hashing import stable_hash
from embed_assets.index.chunk_index import model_key
from embed_assets.lineage import frame_digest
from embed_assets.models import load_model
from embed_assets.recipe.presets import DEFAULT_PRESET, Preset
from embed_assets.training.trainer import (
    TrainingConfig,
    ValidationSet,
    planned_steps,
    train_prefix,
    training_columns,
    validation_ndcg10,
)

# (loaded model, {chunk id: text}) -> the model's vectors of those chunks, in order
CorpusVectors = Callable[[Any, dict[str, str]], np.ndarray]

SELECTED_ON = "held-out generated questions of held-out documents (validation split)"
SELECTED_ON_LABELLED = "labelled queries set aside for choosing ({source})"
SELECTED_ON_TEACHER = (
    "agreement with the teacher {teacher}: its top {top_k} validation chunks for held-out generated questions"
)


@dataclass
class CandidateScore:
    preset: str
    val_ndcg10: float | None  # None: the candidate could not train (see ``note``)
    base_val_ndcg10: float | None
    steps: int
    train_rows: int
    seconds: float
    reused: bool = False
    note: str = ""
    resumable: bool = False  # a checkpoint after ``steps`` is kept for the full training to finish


@dataclass
class RecipeChoice:
    """What was asked for, what was chosen and why (recorded in metadata and beside the model)."""

    requested: str
    chosen: str
    candidates: list[CandidateScore] = field(default_factory=list)
    selection_steps: int | None = None
    selected_on: str = ""
    labelled_queries_used: bool = False  # only when the user set a split of them aside for choosing

    def to_dict(self) -> dict:
        return asdict(self)


def choose_recipe(
    requested: str,
    presets: list[Preset],
    *,
    rows_for: Callable[[Preset], pl.DataFrame],
    config_for: Callable[[Preset], TrainingConfig],
    base_model: str,
    val: ValidationSet | None,
    selection_steps: int,
    cache_dir: Path,
    base_corpus_vectors: CorpusVectors | None = None,
    selected_on: str = SELECTED_ON,
    labelled_queries_used: bool = False,
) -> RecipeChoice:
    """Pick one of ``presets``.

    Args:
        requested: the recipe name the user gave (``auto`` or a preset's name).
        presets: the candidates; one candidate is chosen without training.
        rows_for: a candidate's training rows (train split only).
        config_for: a candidate's full training config; selection runs the first
            ``selection_steps`` steps of it (at most all of them) and merges nothing, so the
            candidates differ only in what the presets set.
        base_model: the model every candidate starts from.
        val: the shared validation set; without one nothing can be compared and the default
            preset is kept (recorded as such).
        selection_steps: the per-candidate step budget (the cost of ``auto``).
        cache_dir: where scores are kept by a hash of rows, config, validation set and model,
            and the chosen candidate's checkpoint (the others' are deleted).
        base_corpus_vectors: where the base model's vectors of the validation chunks are read
            (see :func:`base_validation_score`); None encodes them.
        selected_on: what ``val`` is, for the record (:data:`SELECTED_ON` or
            :data:`SELECTED_ON_LABELLED` or :data:`SELECTED_ON_TEACHER`).
        labelled_queries_used: ``val`` holds labelled queries (the user set a split aside for
            choosing); recorded so the evaluation can say its queries were not the choice's.
    """
    if len(presets) == 1:
        return RecipeChoice(requested, presets[0].name, selected_on="named by the user")
    if val is None or not val.queries:
        return RecipeChoice(
            requested, DEFAULT_PRESET.name, selected_on="no validation split: the default preset"
        )
    base_score = base_validation_score(base_model, val, cache_dir, base_corpus_vectors)
    scores, folders = [], []
    for preset in presets:
        rows, config = rows_for(preset), config_for(preset)
        key = _training_key(rows, config, base_model, val)  # hashes the rows and the model's files: once
        folders.append(_prefix_dir(cache_dir, key))
        scores.append(
            _score(preset, rows, config, base_model, val, base_score, selection_steps, key, folders[-1])
        )
    trained = [s for s in scores if s.val_ndcg10 is not None]
    if not trained:
        return RecipeChoice(
            requested,
            DEFAULT_PRESET.name,
            scores,
            selection_steps,
            "no candidate could train: the default preset",
        )
    best = max(trained, key=lambda s: s.val_ndcg10)  # max keeps the first of equals
    for score, folder in zip(scores, folders, strict=True):
        if score is not best:  # only the winner's training goes on
            shutil.rmtree(folder, ignore_errors=True)
            score.resumable = False
    return RecipeChoice(requested, best.preset, scores, selection_steps, selected_on, labelled_queries_used)


def base_validation_score(
    base_model: str, val: ValidationSet, cache_dir: Path, corpus_vectors: CorpusVectors | None = None
) -> float:
    """``base_model``'s nDCG@10 on ``val``, computed once per model and validation set.

    ``corpus_vectors(model, corpus)`` gives the model's vectors of the validation chunks (the
    chunk index's embedding cache holds the base model's); without it they are encoded."""

    def score() -> dict:
        model = load_model(base_model)
        known = corpus_vectors(model, val.corpus) if corpus_vectors else None
        return {"val_ndcg10": validation_ndcg10(model, val, known)}

    return _cached(cache_dir, "base", {"val": _val_key(val), "base": model_key(base_model)}, score)[
        "val_ndcg10"
    ]


def _training_key(rows: pl.DataFrame, config: TrainingConfig, base_model: str, val: ValidationSet) -> dict:
    """Everything that decides a training run's first steps (and so its checkpoints)."""
    return {
        "rows": frame_digest(rows.select(training_columns(rows))),
        "config": asdict(config),
        "val": _val_key(val),
        "base": model_key(base_model),
    }


def _prefix_dir(cache_dir: Path, training_key: dict) -> Path:
    """Where the first steps of the training ``training_key`` describes keep their checkpoint."""
    return cache_dir / f"prefix-{stable_hash(training_key)}"


def resume_checkpoint(
    cache_dir: Path, rows: pl.DataFrame, config: TrainingConfig, base_model: str, val: ValidationSet | None
) -> Path | None:
    """The checkpoint recipe selection kept for exactly this training (same rows, config, base
    model and validation set), for ``train_bi_encoder(..., resume_from=...)``; None when there
    is none (another config, a named recipe, or a schedule selection already finished)."""
    if val is None or not val.queries:
        return None
    return _last_checkpoint(_prefix_dir(cache_dir, _training_key(rows, config, base_model, val)))


def _last_checkpoint(work: Path) -> Path | None:
    """The latest complete trainer checkpoint under ``work`` (the trainer writes its state last)."""
    found = sorted(
        (p for p in (work / "checkpoints").glob("checkpoint-*") if p.name[11:].isdigit()),
        key=lambda p: int(p.name[11:]),
    )
    return found[-1] if found and (found[-1] / "trainer_state.json").is_file() else None


def drop_checkpoint(checkpoint: Path) -> None:
    """Delete a checkpoint :func:`resume_checkpoint` returned, with its folder, once the full
    training has finished from it."""
    shutil.rmtree(checkpoint.parents[1], ignore_errors=True)  # prefix-<key>/checkpoints/checkpoint-N


def _val_key(val: ValidationSet) -> dict:
    return {"relevant": {k: sorted(v) for k, v in val.relevant.items()}, "corpus": sorted(val.corpus)}


def _cached(cache_dir: Path, name: str, key: dict, compute) -> dict:
    """``compute()``'s JSON record, kept in ``cache_dir`` under a hash of ``key``."""
    record = cache_dir / f"{name}-{stable_hash(key)}.json"
    if record.is_file():
        return {**json.loads(record.read_text()), "reused": True}
    value = compute()
    if value.get("val_ndcg10") is not None:  # a failure is not cached: a rerun tries again
        cache_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(value))
    return value


def _score(
    preset: Preset,
    rows: pl.DataFrame,
    config: TrainingConfig,
    base_model: str,
    val: ValidationSet,
    base_score: float,
    selection_steps: int,
    training_key: dict,
    work: Path,
) -> CandidateScore:
    """Train and score one candidate (or reuse its cached score); ``work`` keeps its checkpoint."""
    steps = min(selection_steps, planned_steps(rows.height, config))
    if rows.height < config.batch_size:
        return CandidateScore(
            preset.name, None, base_score, 0, rows.height, 0.0, note=f"{rows.height} rows < batch_size"
        )
    key = {**training_key, "steps": steps}

    def train_and_score() -> dict:
        shutil.rmtree(work, ignore_errors=True)  # a checkpoint of other steps, or of a run cut short
        try:
            prefix = train_prefix(base_model, rows, work, config, val, steps, base_val_ndcg10=base_score)
        except ValueError as e:  # e.g. no full batch without repeated texts
            shutil.rmtree(work, ignore_errors=True)
            return asdict(CandidateScore(preset.name, None, base_score, 0, rows.height, 0.0, note=str(e)))
        if prefix.checkpoint is None:  # nothing left to resume
            shutil.rmtree(work, ignore_errors=True)
        return asdict(
            CandidateScore(
                preset.name, prefix.val_ndcg10, base_score, prefix.steps, rows.height, prefix.seconds
            )
        )

    # resumable is read off the folder, not the cache: a reused score's checkpoint may be gone.
    record = {
        k: v for k, v in _cached(work.parent, preset.name, key, train_and_score).items() if k != "resumable"
    }
    return CandidateScore(**record, resumable=_last_checkpoint(work) is not None)


__all__ = [
    "SELECTED_ON",
    "SELECTED_ON_LABELLED",
    "SELECTED_ON_TEACHER",
    "CandidateScore",
    "CorpusVectors",
    "RecipeChoice",
    "base_validation_score",
    "choose_recipe",
    "drop_checkpoint",
    "resume_checkpoint",
]
