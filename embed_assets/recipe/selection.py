"""Choose the recipe for a corpus by validation, the way checkpoints and merge weights are chosen.

No labelled query is needed: each candidate preset trains for a few steps on its own training
rows (the train split's questions of its generators), and all candidates are scored on the same
held-out *generated* questions of held-out documents (the val split, every generator's
questions). The best nDCG@10 wins; a tie keeps the earlier preset. Scores are cached by
everything that decides them, so a rerun spends no training twice.
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
from embed_assets.lineage import frame_digest
from embed_assets.mining.index import model_key
from embed_assets.recipe.presets import AUTO, DEFAULT_PRESET, Preset
from embed_assets.training.trainer import TrainingConfig, ValidationSet, train_bi_encoder, training_columns

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
    scores = [
        _score(p, rows_for(p), config_for(p), base_model, val, selection_steps, cache_dir) for p in presets
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


def _score(
    preset: Preset,
    rows: pl.DataFrame,
    config: TrainingConfig,
    base_model: str,
    val: ValidationSet,
    selection_steps: int,
    cache_dir: Path,
) -> CandidateScore:
    steps = selection_steps if config.max_steps < 0 else min(selection_steps, config.max_steps)
    config = replace(config, max_steps=steps, merge_weights=(0.0,), eval_steps=steps)
    if rows.height < config.batch_size:
        return CandidateScore(
            preset.name, None, None, 0, rows.height, 0.0, note=f"{rows.height} rows < batch_size"
        )
    key = stable_hash(
        {
            "rows": frame_digest(rows.select(training_columns(rows))),
            "config": asdict(config),
            "val": {k: sorted(v) for k, v in val.relevant.items()},
            "val_corpus": sorted(val.corpus),
            "base": model_key(base_model),
        }
    )
    record = cache_dir / f"{preset.name}-{key}.json"
    if record.is_file():
        return CandidateScore(**{**json.loads(record.read_text()), "reused": True})
    start = time.perf_counter()
    work = cache_dir / f"{preset.name}-{key}.model"
    try:
        result = train_bi_encoder(base_model, rows, work, config, val=val)
    except ValueError as e:  # e.g. no full batch without repeated texts
        return CandidateScore(preset.name, None, None, 0, rows.height, 0.0, note=str(e))
    finally:
        shutil.rmtree(work, ignore_errors=True)  # only the score is kept
    score = CandidateScore(
        preset.name,
        result.best_val_ndcg10,
        result.base_val_ndcg10,
        result.steps,
        rows.height,
        round(time.perf_counter() - start, 1),
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(asdict(score)))
    return score


__all__ = ["AUTO", "SELECTED_ON", "CandidateScore", "RecipeChoice", "choose_recipe"]
