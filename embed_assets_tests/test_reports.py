"""The evaluation report core: per-query metrics and ranks, p-value text, whole-number bins,
the PNG charts, and the general-domain set that measures forgetting."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from embed_assets.evaluation.general import general_retrieval_set
from embed_assets.evaluation.metrics import (
    DEFAULT_METRICS,
    compare_runs,
    format_p_value,
    ir_metrics,
    paired_bootstrap,
    per_query_metrics,
)
from embed_assets.evaluation.report import (
    distributions_png,
    evaluation_report_png,
    integer_bins,
    markdown_image,
    metric_slug,
    overlaid_distributions_png,
    per_query_frame,
    query_set_version,
    top_movers,
    training_curves_png,
)

QRELS = {"q1": {"d1": 2, "d3": 1}, "q2": {"d2": 1}, "q3": {"d5": 1}, "q4": {"d4": 1}}
BASE = {
    "q1": {"d3": 0.9, "d2": 0.8, "d1": 0.7, "d4": 0.6},  # first relevant at 1
    "q2": {"d1": 0.9, "d2": 0.5},  # first relevant at 2
    "q4": {"d4": 0.9},
}
TUNED = {
    "q1": {"d1": 0.9, "d3": 0.8},  # first relevant at 1, better order
    "q2": {"d2": 0.9, "d1": 0.5},  # 2 -> 1
    "q3": {"d9": 0.9, "d5": 0.1},  # not retrieved -> 2
    "q4": {"d1": 0.9, "d4": 0.1},  # 1 -> 2: lost
}
QUERIES = {"q1": "first", "q2": "second", "q3": "third", "q4": "fourth"}


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as img:
        return img.size


def test_per_query_metrics_average_to_the_aggregates():
    """The per-query values behind the bootstrap are the ones BEIR averages, MRR included."""
    for run in (BASE, TUNED):
        per_query = per_query_metrics(QRELS, run)
        aggregate = ir_metrics(QRELS, run)
        for metric in DEFAULT_METRICS:
            assert set(per_query[metric]) == set(QRELS)
            assert np.mean(list(per_query[metric].values())) == pytest.approx(aggregate[metric], abs=1e-4), (
                metric
            )
    assert per_query_metrics(QRELS, BASE)["MRR@10"] == {"q1": 1.0, "q2": 0.5, "q3": 0.0, "q4": 1.0}


def test_p_value_is_written_as_a_bound_when_no_resample_crosses_zero():
    base = {f"q{i}": 0.5 for i in range(30)}
    better = {q: v + 0.1 for q, v in base.items()}
    sig = paired_bootstrap(better, base, n_resamples=10_000)
    assert sig["p_two_sided"] == 0.0 and sig["p_text"] == "< 1e-4"
    assert format_p_value(0.0, 2_000) == "< 0.0005"
    assert format_p_value(0.0312) == "0.0312"


def test_compare_runs_bootstraps_every_metric_and_keeps_per_query_apart():
    comparison = compare_runs(QRELS, BASE, TUNED, n_resamples=500)
    assert set(comparison["significance"]) == set(DEFAULT_METRICS)
    assert comparison["ndcg10_significance"] == comparison["significance"]["NDCG@10"]
    for metric in DEFAULT_METRICS:
        sig = comparison["significance"][metric]
        expected = (comparison["fine_tuned"][metric] - comparison["base"][metric]) * 100
        assert sig["delta"] == pytest.approx(expected, abs=0.02), metric
        assert sig["ci95_low"] <= sig["delta"] <= sig["ci95_high"]
    assert set(comparison["per_query"]) == {"base", "fine_tuned"}


def test_per_query_frame_ranks_and_movers():
    comparison = compare_runs(QRELS, BASE, TUNED, n_resamples=200)
    frame = per_query_frame("synthetic", QUERIES, QRELS, BASE, TUNED, comparison["per_query"])
    rows = {r["query_id"]: r for r in frame.to_dicts()}
    assert (rows["q2"]["base_rank"], rows["q2"]["fine_tuned_rank"]) == (2, 1)
    assert (rows["q3"]["base_rank"], rows["q3"]["fine_tuned_rank"]) == (None, 2)
    assert (rows["q4"]["base_rank"], rows["q4"]["fine_tuned_rank"]) == (1, 2)
    assert rows["q3"]["query"] == "third" and rows["q1"]["relevant"] == 2
    for r in rows.values():
        assert r["ndcg10_delta"] == pytest.approx(r["fine_tuned_ndcg10"] - r["base_ndcg10"])
    gained, lost = top_movers(frame, n=10)
    assert set(gained["query"]) == {"first", "second", "third"}
    assert lost["query"].to_list() == ["fourth"]
    assert gained["ndcg10_delta"].is_sorted(descending=True)
    assert top_movers(frame, n=1)[0].height == 1


def test_query_set_version_changes_with_any_part_of_the_test_set():
    v = query_set_version(QUERIES, QRELS, ["d1", "d2"])
    assert v == query_set_version(dict(reversed(QUERIES.items())), QRELS, ["d2", "d1"])
    assert v != query_set_version({**QUERIES, "q1": "other"}, QRELS, ["d1", "d2"])
    assert v != query_set_version(QUERIES, {**QRELS, "q2": {"d3": 1}}, ["d1", "d2"])
    assert v != query_set_version(QUERIES, QRELS, ["d1", "d2", "d3"])
    assert metric_slug("Recall@100") == "recall100"


def test_whole_number_bins_centre_each_integer():
    edges = integer_bins([1, 3, 3, 10])
    assert edges[0] == 0.5 and edges[-1] == 10.5 and np.all(np.diff(edges) == 1.0)
    counts, _ = np.histogram([1, 3, 3, 10], bins=edges)
    assert counts.tolist() == [1, 0, 2, 0, 0, 0, 0, 0, 0, 1]


def test_report_images_are_real_pngs():
    comparison = compare_runs(QRELS, BASE, TUNED, n_resamples=200)
    frame = per_query_frame("synthetic", QUERIES, QRELS, BASE, TUNED, comparison["per_query"])
    one = evaluation_report_png({"synthetic": comparison}, {"synthetic": frame})
    two = evaluation_report_png(
        {"synthetic": comparison, "labelled": comparison},
        {"synthetic": frame, "labelled": frame},
        general={"base": 0.8, "fine_tuned": 0.78, "queries": 100},
    )
    (w1, h1), (w2, h2) = _png_size(one), _png_size(two)
    assert w1 == w2 and h2 > 2 * h1  # a row per query set, and one for the general domain
    history = [
        {"step": 1, "loss": 2.0},
        {"step": 2, "loss": 1.5},
        {"step": 2, "eval_val_cosine_ndcg@10": 0.6},
        {"step": 4, "loss": 1.1},
        {"step": 4, "eval_val_cosine_ndcg@10": 0.7},
    ]
    assert _png_size(training_curves_png(history))[0] > 300
    assert training_curves_png([{"step": 2, "eval_val_cosine_ndcg@10": 0.6}]) is None
    assert _png_size(distributions_png([("rank", [1, 2, None, 2], True), ("score", [0.1, 0.5], False)]))
    assert _png_size(overlaid_distributions_png({"pos": [0.8, 0.9], "neg": [0.3, 0.5]}, "cosine"))
    md = markdown_image(one, "report")
    assert md.startswith("![report](data:image/png;base64,iVBORw0KGgo")


def test_general_domain_set_is_deterministic_and_well_formed():
    first, second = general_retrieval_set(), general_retrieval_set()
    assert first == second
    assert len(first.corpus) == 300 and len(first.queries) == 100
    for qid, judged in first.qrels.items():
        (doc,) = judged
        assert doc in first.corpus and qid == f"q-{doc}"
        assert first.queries[qid] not in first.corpus[doc]  # the summary is not repeated in its body
    assert len(set(first.queries.values())) == len(first.queries)
    smaller = general_retrieval_set(documents=50, queries=10)
    assert len(smaller.corpus) == 50 and smaller.version != first.version
    with pytest.raises(ValueError):
        general_retrieval_set(documents=5, queries=10)


def test_general_domain_set_separates_a_real_model_from_a_broken_one(base_model):
    """The real base model retrieves docstring bodies from their summaries well; a model whose
    weights are scrambled does not: the set can show forgetting."""
    import copy

    import torch

    from embed_assets.evaluation.retrieval import retrieve

    general = general_retrieval_set(documents=120, queries=40)
    score = ir_metrics(general.qrels, retrieve(base_model, general.corpus, general.queries, top_k=10))[
        "NDCG@10"
    ]
    broken = copy.deepcopy(base_model)
    with torch.no_grad():
        for p in broken.parameters():
            p.copy_(p[torch.randperm(p.shape[0])] if p.dim() else p)
    scrambled = ir_metrics(general.qrels, retrieve(broken, general.corpus, general.queries, top_k=10))[
        "NDCG@10"
    ]
    assert score > 0.6
    assert scrambled < score - 0.3
