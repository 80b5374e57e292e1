"""The finetuned_model stage without Dagster: finish from selection's checkpoint, reuse a finished
model, refit, and a run key that names everything deciding the weights (real model, real training)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl
import pytest
from test_training_options import rows as setting_rows
from test_training_options import val as setting_val

from embed_assets.recipe.fine_tune import fine_tune, training_run_key
from embed_assets.recipe.presets import AUTO, PRESETS
from embed_assets.recipe.selection import choose_recipe, resume_checkpoint
from embed_assets.training.trainer import TrainingConfig

BASE = "all-MiniLM-L6-v2"


def _examples() -> pl.DataFrame:
    rows = setting_rows()
    return rows.with_columns(split=pl.Series(["train"] * 12 + ["val"] * (rows.height - 12)))


@pytest.mark.slow
def test_fine_tune_finishes_from_selection_reuses_and_refits(tmp_path):
    examples, val = _examples(), setting_val()
    train = examples.filter(pl.col("split") == "train")
    presets = list(PRESETS.values())
    configs = {
        p.name: TrainingConfig(batch_size=4, max_steps=4, eval_steps=2, merge_weights=(0.0, 0.5))
        for p in presets
    }
    configs[presets[1].name] = TrainingConfig(batch_size=4, max_steps=4, eval_steps=2, learning_rate=1e-4)
    cache = tmp_path / "selection"
    choice = choose_recipe(
        AUTO,
        presets,
        rows_for=lambda p: train,
        config_for=lambda p: configs[p.name],
        base_model=BASE,
        val=val,
        selection_steps=2,
        cache_dir=cache,
    )
    config = configs[choice.chosen]
    assert resume_checkpoint(cache, train, config, BASE, val) is not None

    out = tmp_path / "models" / "finetuned-a"
    first = fine_tune(
        BASE, examples, val, config, out, refit=False, selection_cache=cache, card={"recipe": "x"}
    )
    assert first.resumed and not first.reused
    assert first.result.resumed_from_step == 2 and first.result.steps == 4
    assert first.result.train_rows == train.height  # validation rows train only in a refit
    assert resume_checkpoint(cache, train, config, BASE, val) is None  # the finished model superseded it

    again = fine_tune(
        BASE, examples, val, config, out, refit=False, selection_cache=cache, card={"recipe": "x"}
    )
    assert again.reused and not again.resumed
    assert (again.result.steps, again.result.merge_weight) == (first.result.steps, first.result.merge_weight)

    refit_dir = tmp_path / "models" / "finetuned-b"
    refit = fine_tune(BASE, examples, val, config, refit_dir, refit=True, selection_cache=cache, card={})
    assert refit.result.refit["rows"] == examples.height and refit.result.train_rows == examples.height
    assert not (tmp_path / "models" / "selection-b").exists()  # the first training only chose


def test_the_run_key_names_everything_that_decides_the_weights():
    examples = _examples()
    qa_splits = pl.DataFrame({"qa_id": ["a", "b"], "split": ["train", "val"]})
    default = {"labelled_queries_used_for_selection": False}
    inputs = {
        "examples": examples,
        "qa_splits": qa_splits,
        "settings": {"max_steps": 4},
        "refit": False,
        "init_model": BASE,
        "selection": default,
    }

    def key_with(**changed) -> str:
        return training_run_key(**{**inputs, **changed})

    key = key_with()
    assert key == key_with(settings={"max_steps": 4})
    others = [
        key_with(examples=examples.head(10)),
        key_with(qa_splits=qa_splits.head(1)),
        key_with(settings={"max_steps": 5}),
        key_with(refit=True),
        key_with(
            selection={"labelled_queries_used_for_selection": True, "selection_queries_fingerprint": "f"}
        ),
        key_with(selection={**default, "selection_judged_by": {"teacher": "t"}}),
    ]
    assert len({key, *others}) == len(others) + 1
