"""The recipe: presets fill what the user leaves unset, the choice among them by validation,
the training rows of a preset, and the refit after model selection (real model, real training)."""

from __future__ import annotations

import json
import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import polars as pl
import pytest
from sentence_transformers import SentenceTransformer
from test_training_options import rows as setting_rows
from test_training_options import val as setting_val

from embed_assets.models import encode
from embed_assets.recipe.presets import AUTO, PRESETS, RECIPE_FIELDS, candidates, fill, generators_for
from embed_assets.recipe.selection import (
    SELECTED_ON,
    base_validation_score,
    choose_recipe,
    resume_checkpoint,
)
from embed_assets.recipe.settings import FinetunedModelSettings, run_config_errors
from embed_assets.training.examples import training_rows
from embed_assets.training.trainer import (
    TrainingConfig,
    finished_training,
    refit_bi_encoder,
    train_bi_encoder,
)


def test_every_recipe_field_defaults_to_the_recipe_and_each_preset_sets_it():
    from embed_assets.recipe.settings import SETTINGS_BY_ASSET, TrainingRecipeSettings

    # training_examples' and finetuned_model's settings are set inside training_recipe's
    nested = {k: v.annotation for k, v in TrainingRecipeSettings.model_fields.items() if v.annotation}
    settings = {**SETTINGS_BY_ASSET, **nested}
    for asset, names in RECIPE_FIELDS.items():
        for name in names:
            assert settings[asset].model_fields[name].default is None, (asset, name)
            for preset in PRESETS.values():
                assert preset.value(asset, name) is not None, (preset.name, asset, name)


def test_a_set_field_wins_over_the_preset_and_unset_ones_take_it():
    titled = PRESETS["titled-documents"]
    resolved = FinetunedModelSettings(scale=30.0).resolved(titled)
    assert resolved["scale"] == 30.0  # set by the user
    assert resolved["max_steps"] == 100 and resolved["refit"] is True  # the preset's
    core = FinetunedModelSettings().to_core(PRESETS["identifier-manual"])
    assert (core.scale, core.max_steps, core.merge_weights) == (50.0, 40, (0.0, 0.5))
    assert fill("training_examples", {"negatives_per_example": None}, titled)["negatives_per_example"] == 0


def test_auto_stands_for_every_preset_and_their_generators():
    assert [p.name for p in candidates(AUTO)] == list(PRESETS)
    assert generators_for(AUTO) == ("template", "structure")
    assert generators_for("titled-documents") == ("structure",)
    with pytest.raises(ValueError, match="unknown; use one of auto"):
        candidates("wiki")


def test_a_bad_recipe_in_run_config_is_named():
    errors = run_config_errors({"resources": {"recipe": {"config": {"preset": "wiki", "selection_step": 3}}}})
    assert any(e.startswith("resources.recipe.config.preset:") for e in errors), errors
    assert any("selection_step: unknown field; did you mean 'selection_steps'" in e for e in errors), errors


def _qa_and_mined():
    chunks = pl.DataFrame(
        {
            "chunk_id": ["c1", "c2", "c3"],
            "title": ["Locks", "Locks", "WAL"],
            "text": ["Locks\n\nlock_timeout aborts waits", "Locks\n\ndeadlocks 40P01", "WAL\n\nwal_level"],
        }
    )
    qa = pl.DataFrame(
        {
            "qa_id": ["t1", "s1", "s2", "v1"],
            "question": ["what is lock_timeout", "Locks", "deadlocks", "WAL"],
            "positive_chunk_ids": [["c1"], ["c1"], ["c2"], ["c3"]],
            "generator": ["template-v1", "structure-v1", "structure-v1", "structure-v1"],
            "split": ["train", "train", "train", "val"],
        }
    )
    mined = qa.select("qa_id", "question", "positive_chunk_ids").with_columns(
        negative_chunk_ids=pl.Series([["c3"], ["c3"], ["c3"], ["c1"]])
    )
    return chunks, qa, mined


def test_training_rows_keep_the_presets_generators_and_strip_titles_for_title_questions():
    chunks, qa, mined = _qa_and_mined()
    titled = training_rows(
        mined, qa, chunks, negatives_per_example=0, generators=PRESETS["titled-documents"].generator_names()
    )
    assert titled["qa_id"].to_list() == ["s1", "s2", "v1"]
    assert titled["split"].to_list() == ["train", "train", "val"]
    # Structure questions are written from the title: their positives train without it.
    assert titled["positive"].to_list() == ["lock_timeout aborts waits", "deadlocks 40P01", "wal_level"]
    assert titled["untitled"].all()
    manual = training_rows(
        mined, qa, chunks, negatives_per_example=1, generators=PRESETS["identifier-manual"].generator_names()
    )
    assert manual["qa_id"].to_list() == ["t1"]
    assert manual["positive"][0].startswith("Locks") and manual["negative_1"][0].startswith("WAL")
    # A generator no preset names (an LLM backend) keeps every question.
    everything = training_rows(mined, qa, chunks, negatives_per_example=0, generators={"llm:x"})
    assert everything.height == 4


def test_one_named_preset_is_chosen_without_training(tmp_path):
    choice = choose_recipe(
        "titled-documents",
        candidates("titled-documents"),
        rows_for=lambda p: pytest.fail("a named preset trains nothing"),
        config_for=lambda p: pytest.fail("a named preset trains nothing"),
        base_model="all-MiniLM-L6-v2",
        val=None,
        selection_steps=2,
        cache_dir=tmp_path,
    )
    assert choice.chosen == "titled-documents" and choice.candidates == []


def test_auto_trains_each_candidate_scores_it_on_validation_and_caches_the_score(tmp_path):
    """Two presets on the same rows: the one with the useless settings (learning rate near 0)
    cannot beat the other; a second call reuses both scores instead of training again."""
    good, bad = PRESETS["identifier-manual"], PRESETS["titled-documents"]
    configs = {
        good.name: TrainingConfig(batch_size=8, max_steps=40, learning_rate=5e-4, warmup_ratio=0.0),
        bad.name: TrainingConfig(batch_size=8, max_steps=40, learning_rate=1e-9, warmup_ratio=0.0),
    }
    kwargs = dict(
        rows_for=lambda p: setting_rows(),
        config_for=lambda p: configs[p.name],
        base_model="all-MiniLM-L6-v2",
        val=setting_val(),
        selection_steps=2,
        cache_dir=tmp_path,
    )
    choice = choose_recipe(AUTO, [bad, good], **kwargs)
    scores = {c.preset: c for c in choice.candidates}
    assert choice.selected_on == SELECTED_ON and choice.selection_steps == 2
    assert all(c.steps == 2 and c.train_rows == 16 and not c.reused for c in choice.candidates)
    # The near-zero learning rate leaves the base model's score; the other moves it.
    assert scores[bad.name].val_ndcg10 == pytest.approx(scores[bad.name].base_val_ndcg10, abs=1e-3)
    best = max(choice.candidates, key=lambda c: c.val_ndcg10)
    assert choice.chosen == best.preset
    again = choose_recipe(AUTO, [bad, good], **kwargs)
    assert all(c.reused for c in again.candidates) and again.chosen == choice.chosen
    # Only the winner's checkpoint is kept (its training finishes from it), the loser's is deleted.
    assert [c.resumable for c in again.candidates] == [c.preset == choice.chosen for c in again.candidates]
    assert len(list(tmp_path.glob("prefix-*"))) == 1


def test_the_base_score_uses_known_corpus_vectors_instead_of_encoding_them(tmp_path):
    """Given the base model's vectors of the validation chunks (the chunk index's cache holds
    them), the base is scored with those: the same score as encoding them; random vectors give
    a much lower one, so the given vectors are what is scored."""
    val = setting_val()
    asked = []

    def encoded(model, corpus):
        asked.append(list(corpus))
        return encode(model, list(corpus.values()))

    def noise(model, corpus):
        return np.random.default_rng(0).standard_normal((len(corpus), 384)).astype(np.float32)

    own = base_validation_score("all-MiniLM-L6-v2", val, tmp_path / "own")
    given = base_validation_score("all-MiniLM-L6-v2", val, tmp_path / "given", encoded)
    assert asked == [list(val.corpus)] and given == pytest.approx(own, abs=1e-6)
    assert base_validation_score("all-MiniLM-L6-v2", val, tmp_path / "noise", noise) < own - 0.2


def test_refit_trains_every_row_with_what_validation_chose(tmp_path):
    config = TrainingConfig(batch_size=8, max_steps=4, merge_weights=(0.0, 0.5), eval_steps=2)
    selected = train_bi_encoder(
        "all-MiniLM-L6-v2", setting_rows().head(12), tmp_path / "sel", config, val=setting_val()
    )
    assert selected.best_step in (2, 4)
    result = refit_bi_encoder(
        "all-MiniLM-L6-v2", setting_rows(), tmp_path / "refit", config, selected, card={"recipe": "x"}
    )
    assert result.refit == {"rows": 16, "steps": selected.best_step, "selection_rows": 12}
    assert result.steps == selected.best_step and result.train_rows == 16
    assert result.merge_weight == selected.merge_weight
    assert result.best_val_ndcg10 == selected.best_val_ndcg10  # the scores that chose the settings
    record = json.loads((tmp_path / "refit" / "embed_assets_training.json").read_text())
    assert record["result"]["refit"]["rows"] == 16 and record["recipe"] == "x"
    assert record["training_config"]["max_steps"] == selected.best_step
    assert finished_training(tmp_path / "refit") == result  # a rerun reuses it


def test_the_chosen_candidate_finishes_from_selection_checkpoint(tmp_path):
    """Selection runs the first steps of each candidate's own schedule; only the winner keeps
    its checkpoint, and training from it ends where an uninterrupted run does."""
    presets = [PRESETS["identifier-manual"], PRESETS["titled-documents"]]
    configs = {
        p.name: TrainingConfig(batch_size=8, max_steps=6, learning_rate=lr, eval_steps=3)
        for p, lr in zip(presets, (3e-4, 1e-4), strict=True)
    }
    cache = tmp_path / "selection"
    val = setting_val()
    choice = choose_recipe(
        AUTO,
        presets,
        rows_for=lambda p: setting_rows(),
        config_for=lambda p: configs[p.name],
        base_model="all-MiniLM-L6-v2",
        val=val,
        selection_steps=2,
        cache_dir=cache,
    )
    chosen, other = choice.chosen, next(p.name for p in presets if p.name != choice.chosen)
    by_name = {c.preset: c for c in choice.candidates}
    assert by_name[chosen].resumable and not by_name[other].resumable
    assert by_name[chosen].val_ndcg10 >= by_name[other].val_ndcg10
    assert resume_checkpoint(cache, setting_rows(), configs[other], "all-MiniLM-L6-v2", val) is None
    checkpoint = resume_checkpoint(cache, setting_rows(), configs[chosen], "all-MiniLM-L6-v2", val)
    assert checkpoint is not None and checkpoint.name == "checkpoint-2"
    # Another config (one more step) is another training: nothing to resume.
    longer = replace(configs[chosen], max_steps=7)
    assert resume_checkpoint(cache, setting_rows(), longer, "all-MiniLM-L6-v2", val) is None

    resumed = train_bi_encoder(
        "all-MiniLM-L6-v2",
        setting_rows(),
        tmp_path / "resumed",
        configs[chosen],
        val=val,
        resume_from=checkpoint,
    )
    whole = train_bi_encoder("all-MiniLM-L6-v2", setting_rows(), tmp_path / "whole", configs[chosen], val=val)
    assert resumed.resumed_from_step == 2 and whole.resumed_from_step is None
    assert resumed.steps == whole.steps == 6
    assert resumed.best_val_ndcg10 == pytest.approx(whole.best_val_ndcg10, abs=1e-4)
    a = SentenceTransformer(str(tmp_path / "resumed")).encode(["work_mem setting"])
    b = SentenceTransformer(str(tmp_path / "whole")).encode(["work_mem setting"])
    assert float((a * b).sum() / ((a * a).sum() * (b * b).sum()) ** 0.5) > 0.9999
