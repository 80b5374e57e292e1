"""Up-front validation of a whole Dagster run config."""

from __future__ import annotations

import pytest

from embed_assets.defs.configs import CONFIG_BY_ASSET, RunConfigError, validate_run_config
from embed_assets.recipe.presets import PRESETS


def _lines(err: RunConfigError) -> list[str]:
    return [line.strip() for line in str(err).splitlines()[1:]]


def _training(**settings) -> dict:
    """``ops.training_recipe``, where every training setting is set."""
    return {"training_recipe": {"config": settings}}


TRAINING = "ops.training_recipe.config"


def test_valid_configs_pass():
    validate_run_config(None)
    validate_run_config({})
    validate_run_config({"ops": {}})
    validate_run_config(
        {
            "ops": {
                "source_documents": {"config": {"corpus_dir": "/some/where"}},
                "retrieval_eval": {"config": {"labelled_queries_dir": "/q", "labelled_queries_split": "dev"}},
                "document_chunks": {"config": {"chunk_tokens": 256, "overlap_tokens": 32}},
                "qa_quality_scores": {"config": {"dedup_cosine": 0.95, "min_score": 0.1, "lexical_top_k": 0}},
                "mined_negatives": {"config": {"num_negatives": 10, "absolute_margin": 0.05}},
                **_training(
                    training_examples={"min_batches": 1},
                    finetuned_model={
                        "batch_size": 16,
                        "mini_batch_size": 8,
                        "guided_in_batch": True,
                        "guide_margin_strategy": "relative",
                        "guide_margin": 0.05,
                    },
                ),
            }
        }
    )


@pytest.mark.parametrize(
    ("ops", "field"),
    [
        (
            {"qa_quality_scores": {"config": {"dedup_cosine": 1.5}}},
            "ops.qa_quality_scores.config.dedup_cosine",
        ),
        ({"qa_quality_scores": {"config": {"min_score": 1.5}}}, "ops.qa_quality_scores.config.min_score"),
        (
            {"qa_quality_scores": {"config": {"lexical_top_k": -1}}},
            "ops.qa_quality_scores.config.lexical_top_k",
        ),
        ({"mined_negatives": {"config": {"num_negatives": -1}}}, "ops.mined_negatives.config.num_negatives"),
        (
            {"mined_negatives": {"config": {"max_score_ratio": 1.5}}},
            "ops.mined_negatives.config.max_score_ratio",
        ),
        ({"qa_splits": {"config": {"val_fraction": 0.6, "test_fraction": 0.5}}}, "ops.qa_splits.config"),
        ({"no_such_asset": {"config": {}}}, "ops.no_such_asset: unknown asset"),
        (
            {"source_documents": {"config": {"corpus_jsonl": "c.jsonl", "lancedb_uri": "/db"}}},
            "ops.source_documents.config: set corpus_jsonl or lancedb_uri, not both",
        ),
        (
            {"retrieval_eval": {"config": {"gate_metrics": ["NDCG@10", "NDCG@3"]}}},
            "ops.retrieval_eval.config: gate_metrics: unknown ['NDCG@3']",
        ),
        (
            {"retrieval_eval": {"config": {"labelled_queries_split": ""}}},
            "ops.retrieval_eval.config.labelled_queries_split",
        ),
        (
            _training(finetuned_model={"guide_margin_strategy": "percent"}),
            f"{TRAINING}.finetuned_model.guide_margin_strategy",
        ),
        (
            # The check's batch size defaults to the trainer's; given both, they must agree.
            _training(training_examples={"batch_size": 16}, finetuned_model={"batch_size": 32}),
            f"{TRAINING}: training_examples.batch_size (16) differs from finetuned_model.batch_size (32)",
        ),
        (
            _training(finetuned_model={"lr": 0.1}),
            f"{TRAINING}.finetuned_model.lr: unknown field",
        ),
        (
            # the layout before the training settings moved: named with where they are set now
            {"finetuned_model": {"config": {"max_steps": 3}}},
            "ops.finetuned_model: its settings are set on ops.training_recipe.config.finetuned_model",
        ),
    ],
)
def test_single_bad_field_is_named(ops, field):
    with pytest.raises(RunConfigError) as exc:
        validate_run_config({"ops": ops})
    lines = _lines(exc.value)
    assert len(lines) == 1, lines
    assert lines[0].startswith(field), lines


def test_overlap_of_half_chunk_is_named():
    with pytest.raises(RunConfigError) as exc:
        validate_run_config(
            {"ops": {"document_chunks": {"config": {"chunk_tokens": 64, "overlap_tokens": 32}}}}
        )
    [line] = _lines(exc.value)
    assert line.startswith("ops.document_chunks.config")
    assert "overlap_tokens" in line and "chunk_tokens=64" in line


def test_every_error_reported_at_once():
    run_config = {
        "ops": {
            "qa_quality_scores": {"config": {"dedup_cosine": 1.5, "min_score": 1.5}},
            "mined_negatives": {"config": {"num_negatives": -1}},
            "document_chunks": {"config": {"chunk_tokens": 128, "overlap_tokens": 64}},
            **_training(training_examples={"min_batches": 0}, finetuned_model={"batch_size": 1}),
            "mystery": {"config": {}},
        }
    }
    with pytest.raises(RunConfigError) as exc:
        validate_run_config(run_config)
    msg = str(exc.value)
    for field in (
        "ops.qa_quality_scores.config.dedup_cosine",
        "ops.qa_quality_scores.config.min_score",
        "ops.mined_negatives.config.num_negatives",
        "ops.document_chunks.config",
        "overlap_tokens",
        f"{TRAINING}.training_examples.min_batches",
        f"{TRAINING}.finetuned_model.batch_size",
        "ops.mystery: unknown asset",
    ):
        assert field in msg, field
    assert len(_lines(exc.value)) == 7


def test_every_asset_config_builds_with_defaults():
    for name, cls in CONFIG_BY_ASSET.items():
        cfg = cls()
        if name == "training_recipe":  # recipe-controlled fields: filled from a preset
            for preset in PRESETS.values():
                assert cfg.finetuned_model.to_core(preset) is not None, (name, preset.name)
                assert cfg.resolved(preset, teacher_labelled=False)["finetuned_model"]["scale"], name
        elif hasattr(cfg, "to_core"):
            assert cfg.to_core() is not None, name


@pytest.mark.parametrize(
    "run_config, expected",
    [
        ([{"ops": {}}], "run config: must be a mapping"),
        ("ops", "run config: must be a mapping"),
        ({"ops": 5}, "ops: must be a mapping of asset name"),
        ({"ops": ["qa_splits"]}, "ops: must be a mapping of asset name"),
        ({"ops": {"qa_splits": 3}}, "ops.qa_splits: must be {config: {...}}"),
        ({"ops": {"qa_splits": {"config": [1]}}}, "ops.qa_splits.config: must be a mapping"),
        ({"ops": {"qa_splits": {"conf": {}}}}, "ops.qa_splits: must be {config: {...}}"),
        ({"opps": {}}, "run config.opps: unknown field; did you mean 'ops'?"),
        ({"ops": {"qa_split": {"config": {}}}}, "ops.qa_split: unknown asset; did you mean 'qa_splits'?"),
    ],
)
def test_malformed_shapes_are_named_not_a_traceback(run_config, expected):
    with pytest.raises(RunConfigError) as exc:
        validate_run_config(run_config)
    assert any(line.startswith(expected) for line in _lines(exc.value)), _lines(exc.value)


def test_unknown_fields_are_named_with_a_suggestion():
    with pytest.raises(RunConfigError) as exc:
        validate_run_config({"ops": {"qa_quality_scores": {"config": {"dedup_cosin": 0.8, "zzz": 1}}}})
    lines = _lines(exc.value)
    assert "ops.qa_quality_scores.config.dedup_cosin: unknown field; did you mean 'dedup_cosine'?" in lines
    assert any(line.startswith("ops.qa_quality_scores.config.zzz: unknown field; known:") for line in lines)


def test_field_and_cross_field_errors_of_one_asset_come_together():
    """pydantic skips a model's own validators once a field fails; both must still be reported."""
    ops = _training(finetuned_model={"scale": -1.0, "merge_weights": [1.5], "batch_size": 16})
    with pytest.raises(RunConfigError) as exc:
        validate_run_config({"ops": ops})
    lines = _lines(exc.value)
    assert any(line.startswith(f"{TRAINING}.finetuned_model.scale:") for line in lines), lines
    assert any("merge_weights must each be in [0, 1)" in line for line in lines), lines
    assert len(lines) == 2, lines


def test_matryoshka_dims_out_of_range():
    bad = {"ops": _training(finetuned_model={"matryoshka_dims": [4, 64, 64]})}
    with pytest.raises(RunConfigError) as exc:
        validate_run_config(bad)
    [line] = _lines(exc.value)
    assert line.startswith(f"{TRAINING}.finetuned_model.matryoshka_dims") and "[4]" in line
    # Above the base model's width: only known with the model (the CLI passes it).
    wide = {"ops": _training(finetuned_model={"matryoshka_dims": [512, 256]})}
    validate_run_config(wide)
    with pytest.raises(RunConfigError, match=r"\[512\] exceed the base model's embedding size 384"):
        validate_run_config(wide, embedding_dim=384)
    validate_run_config({"ops": _training(finetuned_model={"matryoshka_dims": [256, 64]})}, embedding_dim=384)


def test_every_setting_says_what_it_does():
    """Descriptions show in the launchpad: every field of every stage and of the recipe has one."""
    from embed_assets.recipe.settings import (
        SETTINGS_BY_ASSET,
        FinetunedModelSettings,
        RecipeSettings,
        TrainingExamplesSettings,
    )

    nested = [("training_examples", TrainingExamplesSettings), ("finetuned_model", FinetunedModelSettings)]
    for name, cls in [*SETTINGS_BY_ASSET.items(), ("recipe", RecipeSettings), *nested]:
        for field, info in cls.model_fields.items():
            assert info.description and len(info.description) > 10, f"{name}.{field}"


def test_labelled_queries_choose_only_from_another_split_than_the_evaluations():
    """selection_queries_split needs its folder, and may not be the split the evaluation reports
    from the same folder (the default one, test, included)."""
    evaluation = {"labelled_queries_dir": "labelled"}
    choose = _training(finetuned_model={"selection_queries_split": "dev"}, selection_queries_dir="labelled")
    validate_run_config({"ops": {**choose, "retrieval_eval": {"config": evaluation}}})
    with pytest.raises(RunConfigError) as exc:
        validate_run_config({"ops": _training(finetuned_model={"selection_queries_split": "dev"})})
    [line] = _lines(exc.value)
    assert line.startswith(TRAINING) and "needs selection_queries_dir" in line
    for split in ("test", None):  # None: the evaluation's default split, test
        config = {**evaluation, **({"labelled_queries_split": split} if split else {})}
        same = _training(
            finetuned_model={"selection_queries_split": "test"}, selection_queries_dir="labelled"
        )
        with pytest.raises(RunConfigError) as exc:
            validate_run_config({"ops": {**same, "retrieval_eval": {"config": config}}})
        [line] = _lines(exc.value)
        assert "'test' is also labelled_queries_split" in line
    # another folder's test split is not the evaluation's
    other = _training(finetuned_model={"selection_queries_split": "test"}, selection_queries_dir="other")
    validate_run_config({"ops": {**other, "retrieval_eval": {"config": evaluation}}})


def test_a_config_in_the_old_layout_is_upgraded_with_a_note_per_move():
    from embed_assets.recipe.settings import upgrade_run_config

    old = {
        "ops": {
            "training_examples": {"config": {"min_batches": 1}},
            "finetuned_model": {"config": {"max_steps": 9, "selection_queries_split": "dev"}},
            "retrieval_eval": {"config": {"labelled_queries_dir": "labelled"}},
        },
        "resources": {"recipe": {"config": {"preset": "auto"}}},
    }
    new, notes = upgrade_run_config(old)
    assert new == {
        "ops": {
            "retrieval_eval": {"config": {"labelled_queries_dir": "labelled"}},
            "training_recipe": {
                "config": {
                    "training_examples": {"min_batches": 1},
                    "finetuned_model": {"max_steps": 9, "selection_queries_split": "dev"},
                    "selection_queries_dir": "labelled",
                }
            },
        },
        "resources": {"recipe": {"config": {"preset": "auto"}}},
    }
    assert len(notes) == 3 and notes[0].startswith("ops.training_examples.config moved to")
    validate_run_config(new)
    assert upgrade_run_config(new) == (new, [])  # the current layout is left as it is
    malformed = {"ops": {"finetuned_model": 5}}
    assert upgrade_run_config(malformed) == (malformed, [])  # left for the validator to name


@pytest.mark.parametrize(
    ("teacher", "field"),
    [
        ({"min_auc": 0.3}, "resources.teacher.config.min_auc"),
        ({"kind": "reranker"}, "resources.teacher.config.kind"),
        ({"batch": 8}, "resources.teacher.config.batch: unknown field; did you mean 'batch_size'?"),
    ],
)
def test_bad_teacher_settings_are_named(teacher, field):
    with pytest.raises(RunConfigError) as exc:
        validate_run_config({"resources": {"teacher": {"config": teacher}}})
    [line] = _lines(exc.value)
    assert line.startswith(field), line


def test_a_teacher_needs_a_negative_per_row():
    from embed_assets.recipe.presets import TITLED_DOCUMENTS, negatives_per_example
    from embed_assets.recipe.settings import TrainingExamplesSettings

    assert negatives_per_example(TITLED_DOCUMENTS, TrainingExamplesSettings(), teacher=False) == 0
    assert negatives_per_example(TITLED_DOCUMENTS, TrainingExamplesSettings(), teacher=True) == 1
    assert (
        negatives_per_example(TITLED_DOCUMENTS, TrainingExamplesSettings(negatives_per_example=3), True) == 3
    )
    with pytest.raises(
        ValueError, match="ops.training_recipe.config.training_examples.negatives_per_example is 0"
    ):
        negatives_per_example(TITLED_DOCUMENTS, TrainingExamplesSettings(negatives_per_example=0), True)


def test_the_gate_watches_recall_at_100_by_default():
    from embed_assets.recipe.settings import RetrievalEvalSettings

    assert RetrievalEvalSettings().gate_metrics == ["NDCG@10", "Recall@100"]
