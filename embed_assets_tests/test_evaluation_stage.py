"""The retrieval_eval stage without Dagster: both models on every query set, the teacher beside
them, forgetting, and the gate (real model, real retrieval)."""

from __future__ import annotations

import numpy as np
from test_training_options import val as setting_val

from embed_assets.evaluation.labelled import LabelledQueries
from embed_assets.evaluation.stage import LABELLED, SYNTHETIC, Side, evaluate_models
from embed_assets.models import encode


def _inputs(base_model):
    val = setting_val()
    corpus = val.corpus
    qrels = {q: dict.fromkeys(rel, 1) for q, rel in val.relevant.items()}
    # two chunks per document: a document scores its best chunk
    chunk_document = {c: f"doc{int(c[1:]) // 2}" for c in corpus}
    labelled = LabelledQueries(
        queries={"h1": "which setting bounds connections", "h2": "how often does autovacuum wake up"},
        qrels={"h1": {chunk_document["c4"]: 2}, "h2": {chunk_document["c6"]: 1}},
        source="hand-written",
        fingerprint="f",
    )
    vectors = encode(base_model, list(corpus.values()))
    return corpus, val.queries, qrels, chunk_document, labelled, vectors


def _evaluate(base_model, base_vectors, tuned_vectors, **options):
    """Both sides the same model, told apart by their corpus vectors."""
    corpus, queries, qrels, *_ = _inputs(base_model)
    sides = {"base": Side(base_model, base_vectors), "fine_tuned": Side(base_model, tuned_vectors)}
    return evaluate_models(sides, corpus, queries, qrels, top_k=10, **options)


def test_a_model_equal_to_its_base_passes_and_every_set_is_scored(base_model):
    corpus, queries, qrels, chunk_document, labelled, vectors = _inputs(base_model)
    asked = []

    def teacher_score(qs: dict, candidates: dict, depth: int) -> dict:
        asked.append((set(qs), depth))
        return candidates  # a teacher that agrees with the base's ranking

    result = _evaluate(
        base_model,
        vectors,
        vectors,
        gate_metrics=["NDCG@10", "Recall@100"],
        labelled=labelled,
        chunk_document=chunk_document,
        teacher_score=teacher_score,
    )
    assert list(result.sets) == [SYNTHETIC, LABELLED]
    synthetic, real = result.sets[SYNTHETIC], result.sets[LABELLED]
    assert synthetic.queries == len(queries) and real.queries == 2
    assert synthetic.comparison["base"] == synthetic.comparison["fine_tuned"]
    assert synthetic.comparison["base"]["NDCG@10"] > 0.5  # the settings' own names find them
    assert (
        synthetic.teacher == synthetic.comparison["base"]
    )  # the teacher reranked the base's hits as they were
    assert real.teacher is not None and set(real.frame["query_id"]) == {"h1", "h2"}
    assert asked == [(set(queries), 10), ({"h1", "h2"}, min(len(corpus), 100))]
    assert result.gate.passed and set(result.gate.deltas.values()) == {0.0}
    assert result.general["forgetting_points"] == 0.0 and result.forgetting_points == 0.0
    assert result.general["queries"] > 0 and synthetic.version != real.version


def test_a_worse_model_fails_the_gate_on_the_set_it_lost(base_model):
    corpus, queries, qrels, chunk_document, labelled, vectors = _inputs(base_model)
    shuffled = vectors[
        np.random.default_rng(0).permutation(len(vectors))
    ]  # every chunk's vector is another's
    result = _evaluate(base_model, vectors, shuffled, gate_metrics=["NDCG@10"], tolerance_points=1.0)
    assert list(result.sets) == [SYNTHETIC] and result.sets[SYNTHETIC].teacher is None
    assert not result.gate.passed and result.gate.failed == [SYNTHETIC]
    assert result.gate.regressions[(SYNTHETIC, "NDCG@10")] < -1.0
