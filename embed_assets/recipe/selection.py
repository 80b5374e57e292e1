"""Choose the recipe for a corpus by validation, the way checkpoints and merge weights are chosen.

No labelled query is needed: each candidate preset trains for a few steps on its own training
rows (the train split's questions of its generators), and all candidates are scored once, after
training, on the same held-out *generated* questions of held-out documents (the val split, every
generator's questions); the base model is scored once for all. The best nDCG@10 wins; a tie keeps
the earlier preset. Scores are cached by everything that decides them, so a rerun spends no
training twice.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import polars as pl

from embed_assets.hashing import stable_hash
from embed_assets.index.chunk_index import model_key
from embed_assets.lineage import frame_digest
from embed_assets.models import load_model
from embed_assets.recipe.presets import DEFAULT_PRESET, Preset
from embed_assets.training.trainer import (
    TrainingConfig,
    ValidationSet,
    train_bi_encoder,
    training_columns,
    validation_ndcg10,
)

SELECTED_ON = "held-out generated questions of held-out documents (validation split)"


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


@dataclass
class RecipeChoice:
    """What was asked for, what was chosen and why (recorded in metadata and beside the model)."""

    requested: str
    chosen: str
    candidates: list[CandidateScore] = field(default_factory=list)
    selection_steps: int | None = None
    selected_on: str = ""
    labelled_queries_used: bool = False  # the choice never reads labelled queries

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
) -> RecipeChoice:
    """Pick one of ``presets``.

    Args:
        requested: the recipe name the user gave (``auto`` or a preset's name).
        presets: the candidates; one candidate is chosen without training.
        rows_for: a candidate's training rows (train split only).
        config_for: a candidate's full training config; selection trains it for at most
            ``selection_steps`` steps, validates once at the end and merges nothing, so the
            candidates differ only in what the presets set.
        base_model: the model every candidate starts from.
        val: the shared validation set; without one nothing can be compared and the default
            preset is kept (recorded as such).
        selection_steps: the per-candidate step budget (the cost of ``auto``).
        cache_dir: where scores are kept by a hash of rows, config, validation set and model.
    """
    if len(presets) == 1:
        return RecipeChoice(requested, presets[0].name, selected_on="named by the user")
    if val is None or not val.queries:
        return RecipeChoice(
            requested, DEFAULT_PRESET.name, selected_on="no validation split: the default preset"
        )
    base_score = _cached(
        cache_dir,
        "base",
        {"val": _val_key(val), "base": model_key(base_model)},
        lambda: {"val_ndcg10": validation_ndcg10(load_model(base_model), val)},
    )["val_ndcg10"]
    scores = [
        _score(p, rows_for(p), config_for(p), base_model, val, base_score, selection_steps, cache_dir)
        for p in presets
    ]
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
    return RecipeChoice(requested, best.preset, scores, selection_steps, SELECTED_ON)


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
    cache_dir: Path,
) -> CandidateScore:
    steps = selection_steps if config.max_steps < 0 else min(selection_steps, config.max_steps)
    config = replace(config, max_steps=steps, merge_weights=(0.0,), eval_steps=None)
    if rows.height < config.batch_size:
        return CandidateScore(
            preset.name, None, base_score, 0, rows.height, 0.0, note=f"{rows.height} rows < batch_size"
        )
    key = {
        "rows": frame_digest(rows.select(training_columns(rows))),
        "config": asdict(config),
        "val": _val_key(val),
        "base": model_key(base_model),
    }

    def train_and_score() -> dict:
        start = time.perf_counter()
        work = cache_dir / f"{preset.name}.model"
        try:
            # No validation during training (no checkpoints): one score at the end is the comparison.
            result = train_bi_encoder(base_model, rows, work, config)
            score = validation_ndcg10(load_model(str(work)), val)
        except ValueError as e:  # e.g. no full batch without repeated texts
            return asdict(CandidateScore(preset.name, None, base_score, 0, rows.height, 0.0, note=str(e)))
        finally:
            shutil.rmtree(work, ignore_errors=True)  # only the score is kept
        seconds = round(time.perf_counter() - start, 1)
        return asdict(CandidateScore(preset.name, score, base_score, result.steps, rows.height, seconds))

    return CandidateScore(**_cached(cache_dir, preset.name, key, train_and_score))


__all__ = ["SELECTED_ON", "CandidateScore", "RecipeChoice", "choose_recipe"]
