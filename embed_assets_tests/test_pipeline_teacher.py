"""The whole teacher path through a real materialization: a tiny CrossEncoder, built and trained
here from the packaged MiniLM weights, labels the mined triples; training drops the negatives it
scores above their positive and fits its margins; the evaluation scores it zero-shot by reranking."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dagster as dg
import polars as pl
import pytest

from embed_assets.defs.definitions import all_assets, build_resources
from embed_assets.defs.resources import TeacherResource
from embed_assets.generation.structure import StructureQuestionGenerator
from embed_assets.generation.template import TemplateQuestionGenerator
from embed_assets_tests.test_pipeline_e2e import MINI_LABELLED, materialized, tiny_run_config


@pytest.fixture(scope="module")
def trained_cross_encoder(tmp_path_factory, mini_chunks):
    """MiniLM with a classification head, trained for a few steps to tell a generated question's
    chunk from a random chunk of another document: a real (if small) reranker."""
    from datasets import Dataset
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from embed_assets.models import resolve_model_path

    qa = pl.concat(
        [
            generator.generate(mini_chunks, questions_per_chunk=2, multi_hop_questions=0, seed=9).qa
            for generator in (TemplateQuestionGenerator(), StructureQuestionGenerator())
        ],
        how="diagonal_relaxed",
    )
    text = dict(zip(mini_chunks["chunk_id"], mini_chunks["text"], strict=True))
    doc = dict(zip(mini_chunks["chunk_id"], mini_chunks["doc_id"], strict=True))
    rng = random.Random(0)
    queries, passages, labels = [], [], []
    for question, positives in zip(qa["question"], qa["positive_chunk_ids"], strict=True):
        other = rng.choice([c for c in text if doc[c] != doc[positives[0]]])
        queries += [question, question]
        passages += [text[positives[0]], text[other]]
        labels += [1.0, 0.0]
    model = CrossEncoder(resolve_model_path("all-MiniLM-L6-v2"), num_labels=1, device="cpu")
    args = CrossEncoderTrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("ce_train")),
        max_steps=80,  # 40 steps at 5e-5 left it at AUC 0.67; this one separates (0.99)
        per_device_train_batch_size=16,
        learning_rate=1e-4,
        warmup_ratio=0.1,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
    )
    data = Dataset.from_dict({"query": queries, "passage": passages, "label": labels})
    CrossEncoderTrainer(
        model=model, args=args, train_dataset=data, loss=BinaryCrossEntropyLoss(model)
    ).train()
    path = tmp_path_factory.mktemp("tiny_reranker")
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def teacher_pipeline(tmp_path_factory, trained_cross_encoder):
    home = tmp_path_factory.mktemp("home_teacher")
    resources = build_resources(str(home))
    resources["teacher"] = TeacherResource(name_or_path=str(trained_cross_encoder), batch_size=16)
    run_config = tiny_run_config()
    run_config["ops"]["retrieval_eval"] = {"config": {"labelled_queries_dir": str(MINI_LABELLED)}}
    result = dg.materialize(
        all_assets,
        run_config=run_config,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,  # what the gate decides on 8 documents is not what this module tests
    )
    return result, home, resources, run_config


def test_the_teacher_labels_every_triple_and_shows_it(teacher_pipeline):
    result, _, _, _ = teacher_pipeline
    mats = materialized(result)
    assert {"teacher_labels", "training_examples", "finetuned_model", "retrieval_eval"} <= set(mats)
    labels = result.output_for_node("teacher_labels")
    mined = result.output_for_node("mined_negatives")
    assert labels.height == sum(len(p) for p in mined["positive_chunk_ids"])
    meta = mats["teacher_labels"].metadata
    assert meta["teacher_kind"].value == "cross-encoder"
    assert meta["separation_auc"].value > 0.6
    triples = sum(len(n) for n in labels["negative_chunk_ids"])
    assert meta["triples"].value == triples
    margins = [
        p - n
        for p, ns in zip(labels["teacher_positive"], labels["teacher_negatives"], strict=True)
        for n in ns
    ]
    assert meta["false_negatives"].value == sum(m <= 0 for m in margins)
    assert meta["pairs_scored"].value + meta["pairs_from_cache"].value >= triples + labels.height
    for key in ("margin_distribution", "score_distributions"):
        assert meta[key].value.startswith(f"![{key}](data:image/png;base64,")


def test_training_rows_carry_the_teachers_margins_without_false_negatives(teacher_pipeline):
    result, _, _, _ = teacher_pipeline
    rows = result.output_for_node("training_examples")
    labels = result.output_for_node("teacher_labels")
    text = dict(
        zip(
            result.output_for_node("document_chunks")["chunk_id"],
            result.output_for_node("document_chunks")["text"],
            strict=True,
        )
    )
    assert "label" in rows.columns and rows.height > 0
    scored = {
        (r["qa_id"], r["positive_chunk_id"]): (
            r["teacher_positive"],
            dict(zip(r["negative_chunk_ids"], r["teacher_negatives"], strict=True)),
        )
        for r in labels.iter_rows(named=True)
    }
    by_text = {t: c for c, t in text.items()}
    for r in rows.iter_rows(named=True):
        pos, negs = scored[(r["qa_id"], r["positive_id"])]
        negative = by_text.get(r["negative_1"])
        if negative is None:  # a title-stripped row: its texts lost the header
            continue
        assert negs[negative] < pos
        assert r["label"][0] == pytest.approx(pos - negs[negative], abs=1e-5)
    meta = materialized(result)["training_examples"].metadata
    assert meta["teacher_labelled"].value is True
    assert meta["false_negatives_dropped"].value == int(rows["false_negatives_dropped"].sum())
    assert meta["negatives_per_example"].value >= 1  # titled-documents' 0 becomes 1 with a teacher


def test_the_evaluation_scores_the_teacher_zero_shot(teacher_pipeline):
    result, _, _, _ = teacher_pipeline
    evaluation = result.output_for_node("retrieval_eval")
    teacher = evaluation["teacher"]
    assert teacher["kind"] == "cross-encoder"
    for query_set in ("synthetic test split", "labelled queries"):
        assert 0.0 < teacher[query_set]["NDCG@10"] <= 1.0
    # a reranker of the base's top 100 finds nothing the base did not: same Recall@100
    assert teacher["synthetic test split"]["Recall@100"] == pytest.approx(evaluation["base"]["Recall@100"])
    meta = materialized(result)["retrieval_eval"].metadata
    version = evaluation["test_set_version"]
    assert meta[f"ndcg10_teacher@synthetic-{version}"].value == pytest.approx(
        teacher["synthetic test split"]["NDCG@10"], abs=1e-4
    )
    assert "| synthetic test split | teacher |" in meta["teacher_vs_models"].value


def test_the_teacher_judges_the_recipe_checkpoint_and_merge(teacher_pipeline):
    """With a teacher, every label-free choice is made on its judgement of held-out questions."""
    result, _, resources, _ = teacher_pipeline
    mats = materialized(result)
    recipe = mats["training_recipe"].metadata
    expected = f"agreement with the teacher {resources['teacher'].name_or_path}: its top 10"
    assert recipe["selected_on"].value.startswith(expected)
    assert 0.0 <= recipe["teacher_top_k_holds_source_chunk"].value <= 1.0
    assert mats["finetuned_model"].metadata["model_selected_on"].value.startswith(expected)
    assert result.output_for_node("finetuned_model")["labelled_queries_used_for_selection"] is False


def test_a_rerun_scores_no_pair_twice(teacher_pipeline):
    _, home, resources, run_config = teacher_pipeline
    again = dg.materialize(
        all_assets, resources=resources, instance=dg.DagsterInstance.ephemeral(), selection=["teacher_labels"]
    )
    meta = materialized(again)["teacher_labels"].metadata
    assert meta["pairs_scored"].value == 0 and meta["pairs_from_cache"].value > 0


def test_without_a_teacher_the_stage_is_empty_and_rows_carry_no_labels(tmp_path):
    """The default ('none'): nothing is scored and training is what it was."""
    selection = dg.AssetSelection.assets("training_examples").upstream()
    keys = {k.to_user_string() for k in selection.resolve(all_assets)}
    run_config = tiny_run_config()
    run_config["ops"] = {k: v for k, v in run_config["ops"].items() if k in keys}
    result = dg.materialize(
        all_assets,
        run_config=run_config,
        resources=build_resources(str(tmp_path)),
        instance=dg.DagsterInstance.ephemeral(),
        selection=selection,
        raise_on_error=False,  # the batch check reads finetuned_model's default batch size here
    )
    assert result.output_for_node("teacher_labels").height == 0
    assert materialized(result)["teacher_labels"].metadata["teacher"].value == "none"
    assert "label" not in result.output_for_node("training_examples").columns
    assert isinstance(result.output_for_node("training_examples"), pl.DataFrame)
