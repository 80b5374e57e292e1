"""IR metrics against hand-computed values, and the base-vs-tuned comparison table."""

from __future__ import annotations

import math

import pytest

from embed_assets.evaluation.metrics import (
    DEFAULT_METRICS,
    comparison_table,
    ir_metrics,
    markdown_table,
    paired_bootstrap,
    per_query_ndcg,
)

# q1 has graded relevance: d1 is highly relevant (2), d3 relevant (1).
# q2 has one relevant doc. q3 is judged but missing from the run.
QRELS = {
    "q1": {"d1": 2, "d3": 1},
    "q2": {"d2": 1},
    "q3": {"d5": 1},
}
RUN = {
    # ranking: 1 d3 (rel 1), 2 d2 (0), 3 d1 (rel 2), 4 d4 (0)
    "q1": {"d3": 0.9, "d2": 0.8, "d1": 0.7, "d4": 0.6},
    # ranking: 1 d1 (0), 2 d2 (rel 1)
    "q2": {"d1": 0.9, "d2": 0.5},
}


def test_ir_metrics_by_hand():
    m = ir_metrics(QRELS, RUN, k_values=(1, 3))
    log2 = math.log2

    # nDCG (trec_eval: gain = relevance grade, discount = log2(rank + 1)).
    # q1@1: DCG = 1/log2(2) = 1; ideal puts d1 (2) first: IDCG = 2 -> 0.5
    # q1@3: DCG = 1 + 0 + 2/log2(4) = 2; IDCG = 2 + 1/log2(3) -> 2 / 2.6309 = 0.7602
    # q2@1: 0;  q2@3: DCG = 1/log2(3), IDCG = 1 -> 0.6309
    # q3: 0 (missing from the run counts as zero, averaged over 3 queries)
    q1_ndcg3 = 2 / (2 + 1 / log2(3))
    assert m["NDCG@1"] == pytest.approx((0.5 + 0 + 0) / 3, abs=1e-4)
    assert m["NDCG@3"] == pytest.approx((q1_ndcg3 + 1 / log2(3) + 0) / 3, abs=1e-4)

    # Recall@k = relevant in top k / all relevant.
    # q1@1: 1/2; q1@3: 2/2; q2@1: 0; q2@3: 1/1; q3: 0
    assert m["Recall@1"] == pytest.approx((0.5 + 0 + 0) / 3, abs=1e-4)
    assert m["Recall@3"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-4)

    # MAP@k = sum of precision at each relevant rank ≤ k / number of relevant docs.
    # q1@1: P@1 = 1 -> 1/2; q1@3: (1/1 + 2/3) / 2 = 0.8333
    # q2@1: 0; q2@3: (1/2) / 1 = 0.5
    assert m["MAP@1"] == pytest.approx((0.5 + 0 + 0) / 3, abs=1e-4)
    assert m["MAP@3"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5 + 0) / 3, abs=1e-4)

    # MRR@k = 1 / rank of the first relevant doc within k.
    # q1: 1 (both k); q2@1: 0, q2@3: 1/2
    assert m["MRR@1"] == pytest.approx((1 + 0 + 0) / 3, abs=1e-4)
    assert m["MRR@3"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-4)

    # Precision@3: q1 2/3, q2 1/3, q3 0
    assert m["Precision@3"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3, abs=1e-4)


def test_metric_names_follow_beir():
    m = ir_metrics(QRELS, RUN, k_values=(1, 5, 10, 100))
    for name in DEFAULT_METRICS:
        assert name in m, name
    assert not any("MAPrecision" in k for k in m)


def test_missing_query_counts_as_zero():
    full = ir_metrics({"q1": QRELS["q1"], "q2": QRELS["q2"]}, RUN, k_values=(3,))
    with_missing = ir_metrics(QRELS, RUN, k_values=(3,))
    for name in ("NDCG@3", "Recall@3", "MAP@3", "MRR@3"):
        assert with_missing[name] == pytest.approx(full[name] * 2 / 3, abs=1e-4), name


def test_perfect_run_scores_one():
    run = {"q1": {"d1": 2.0, "d3": 1.0}, "q2": {"d2": 1.0}, "q3": {"d5": 1.0}}
    m = ir_metrics(QRELS, run, k_values=(1, 3))
    for name in ("NDCG@3", "Recall@3", "MAP@3", "MRR@1", "NDCG@1"):
        assert m[name] == pytest.approx(1.0), name


def test_query_id_equal_to_doc_id_is_not_dropped():
    # BEIR drops (query, doc) pairs with identical ids by default; ir_metrics must not.
    m = ir_metrics({"x": {"x": 1}}, {"x": {"x": 1.0}}, k_values=(1,))
    assert m["NDCG@1"] == pytest.approx(1.0)


def test_comparison_table_deltas():
    base = {"NDCG@10": 0.5, "MAP@10": 0.4, "Recall@10": 0.0, "MRR@10": 0.25}
    tuned = {"NDCG@10": 0.55, "MAP@10": 0.3, "Recall@10": 0.2}
    t = comparison_table(base, tuned)
    rows = {r["metric"]: r for r in t.to_dicts()}
    # MRR@10 has no tuned value and metrics absent from both are skipped.
    assert list(rows) == ["NDCG@10", "Recall@10", "MAP@10"]
    # points = (0.55 - 0.5) * 100 = 5.0; relative = 0.05 / 0.5 = 10 %
    assert rows["NDCG@10"]["delta_points"] == pytest.approx(5.0)
    assert rows["NDCG@10"]["delta_relative_pct"] == pytest.approx(10.0)
    # points = -10.0; relative = -0.1 / 0.4 = -25 %
    assert rows["MAP@10"]["delta_points"] == pytest.approx(-10.0)
    assert rows["MAP@10"]["delta_relative_pct"] == pytest.approx(-25.0)
    # base 0: relative delta undefined
    assert rows["Recall@10"]["delta_points"] == pytest.approx(20.0)
    assert rows["Recall@10"]["delta_relative_pct"] is None
    assert rows["NDCG@10"]["base"] == 0.5 and rows["NDCG@10"]["fine_tuned"] == 0.55


def test_markdown_table_renders_signed_deltas():
    t = comparison_table({"NDCG@10": 0.5}, {"NDCG@10": 0.55})
    md = markdown_table(t).splitlines()
    assert md[0] == "| metric | base | fine_tuned | delta_points | delta_relative_pct |"
    assert md[2] == "| NDCG@10 | 0.5 | 0.55 | +5.00 | +10.00 |"


def test_per_query_ndcg_by_hand_and_averages_to_beir():
    per_q = per_query_ndcg(QRELS, RUN, k=3)
    assert per_q["q1"] == pytest.approx(2 / (2 + 1 / math.log2(3)), abs=1e-4)
    assert per_q["q2"] == pytest.approx(1 / math.log2(3), abs=1e-4)
    assert per_q["q3"] == 0.0  # judged but not retrieved
    assert sum(per_q.values()) / 3 == pytest.approx(ir_metrics(QRELS, RUN, k_values=(3,))["NDCG@3"], abs=1e-4)


def test_paired_bootstrap_separates_a_consistent_gain_from_noise():
    base = {f"q{i}": 0.5 for i in range(200)}
    consistent = {q: v + 0.02 for q, v in base.items()}  # +2 points on every query
    noisy = {q: v + (0.3 if i % 2 else -0.3) for i, (q, v) in enumerate(base.items())}  # mean 0
    gain = paired_bootstrap(consistent, base, n_resamples=2000)
    assert gain["delta"] == pytest.approx(2.0)
    assert gain["ci95_low"] == pytest.approx(2.0) and gain["p_two_sided"] == 0.0
    noise = paired_bootstrap(noisy, base, n_resamples=2000)
    assert noise["delta"] == pytest.approx(0.0)
    assert noise["ci95_low"] < 0 < noise["ci95_high"] and noise["p_two_sided"] > 0.5
    assert paired_bootstrap(noisy, base, n_resamples=2000) == noise  # seeded
    with pytest.raises(ValueError, match="no query"):
        paired_bootstrap({"a": 1.0}, {"b": 1.0})


def test_load_beir_leaves_out_documents_without_text_and_names_bad_lines(tmp_path):
    from embed_assets.evaluation.retrieval import load_beir

    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "a", "title": "Wing flutter", "text": "Flutter of thin wings."}\n'
        '{"_id": "b", "title": "", "text": ""}\n'
        '{"_id": "c", "text": "No title here."}\n'
        '{"_id": "d", "title": null, "text": "A null title."}\n'
        '{"_id": "e", "title": "Wing flutter", "text": "Flutter of thin wings."}\n'
    )
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "flutter"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\tb\t1\n")
    corpus, queries, qrels = load_beir(tmp_path)
    assert corpus == {
        "a": "Wing flutter Flutter of thin wings.",
        "c": "No title here.",
        "d": "A null title.",
        "e": "Wing flutter Flutter of thin wings.",
    }
    assert queries == {"q1": "flutter"} and qrels == {"q1": {"a": 1, "b": 1}}
    (tmp_path / "corpus.jsonl").write_text('{"_id": "a", "text": "fine"}\n{"_id": "b", "text": 7}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: text of 'b' is not a string"):
        load_beir(tmp_path)


def test_the_gate_holds_every_query_set_to_every_metric_within_tolerance():
    from embed_assets.evaluation.gate import no_regression

    evaluations = {
        "synthetic test split": {
            "base": {"NDCG@10": 0.50, "Recall@10": 0.70},
            "fine_tuned": {"NDCG@10": 0.60, "Recall@10": 0.695},
        },
        "labelled queries": {
            "base": {"NDCG@10": 0.30, "Recall@10": 0.20},
            "fine_tuned": {"NDCG@10": 0.29, "Recall@10": 0.25},
        },
    }
    strict = no_regression(evaluations, ["NDCG@10", "Recall@10"])
    assert not strict.passed and strict.failed == ["synthetic test split", "labelled queries"]
    assert strict.regressions == {
        ("synthetic test split", "Recall@10"): pytest.approx(-0.5),
        ("labelled queries", "NDCG@10"): pytest.approx(-1.0),
    }
    assert no_regression(evaluations, ["NDCG@10", "Recall@10"], tolerance_points=1.0).passed
    only_ndcg = no_regression(evaluations, ["NDCG@10"], tolerance_points=0.5)
    assert only_ndcg.failed == ["labelled queries"]
