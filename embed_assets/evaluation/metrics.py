"""IR metrics from BEIR's evaluator (pytrec_eval underneath), and comparison tables.

Metric names follow BEIR: ``NDCG@10``, ``Recall@100``, ``MAP@10``, ``MRR@10``.
"""

from __future__ import annotations

import logging
import math

import polars as pl
from beir.retrieval.evaluation import EvaluateRetrieval

DEFAULT_METRICS = ("NDCG@1", "NDCG@5", "NDCG@10", "Recall@10", "Recall@100", "MAP@10", "MRR@10")

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def ir_metrics(qrels: Qrels, run: Run, k_values: tuple[int, ...] = (1, 5, 10, 100)) -> dict[str, float]:
    """nDCG, MAP, Recall, Precision and MRR at each ``k`` for a run against ``qrels``.

    Queries in ``qrels`` that the run lacks count as zero (pytrec_eval skips them,
    which would inflate scores), so we add them as empty result lists.
    """
    run = {q: run.get(q, {}) for q in qrels}
    # BEIR logs every metric at INFO; keep our run logs readable.
    logging.getLogger("beir.retrieval.evaluation").setLevel(logging.WARNING)
    # ignore_identical_ids=False: our query ids never collide with chunk ids, and
    # BEIR's default would silently drop such pairs.
    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(
        qrels, run, list(k_values), ignore_identical_ids=False
    )
    mrr = EvaluateRetrieval.evaluate_custom(qrels, run, list(k_values), metric="mrr")
    out: dict[str, float] = {}
    for d in (ndcg, _map, recall, precision, mrr):
        out.update({("Precision@" + k[2:] if k.startswith("P@") else k): float(v) for k, v in d.items()})
    return out


def per_query_ndcg(qrels: Qrels, run: Run, k: int = 10) -> dict[str, float]:
    """nDCG@k of every query in ``qrels`` (0 for a query the run lacks), by pytrec_eval,
    the same computation BEIR's aggregate ``NDCG@k`` averages."""
    import pytrec_eval

    measure = f"ndcg_cut_{k}"
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}"})
    scores = evaluator.evaluate({q: run.get(q, {}) for q in qrels})
    return {q: float(scores.get(q, {}).get(measure, 0.0)) for q in qrels}


def per_query_metrics(qrels: Qrels, run: Run, metrics=DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """``{metric: {query_id: value}}`` for every query in ``qrels`` (0 for a query the run lacks):
    the per-query values whose means are :func:`ir_metrics`' aggregates. nDCG, MAP and Recall come
    from pytrec_eval as in BEIR; MRR@k is computed as BEIR's ``mrr`` does (first hit with grade > 0
    among the top k, ties in the run's order)."""
    import pytrec_eval

    trec = {"NDCG": "ndcg_cut", "MAP": "map_cut", "Recall": "recall", "Precision": "P"}
    wanted: dict[str, set[str]] = {}
    for m in metrics:
        name, k = m.split("@")
        if name in trec:
            wanted.setdefault(trec[name], set()).add(k)
        elif name != "MRR":
            raise ValueError(f"unknown metric {m!r}")
    measures = {f"{t}.{','.join(sorted(ks, key=int))}" for t, ks in wanted.items()}
    runs = {q: run.get(q, {}) for q in qrels}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(runs) if measures else {}
    out: dict[str, dict[str, float]] = {}
    for m in metrics:
        name, k = m.split("@")
        if name == "MRR":
            out[m] = {}
            for q, judged in qrels.items():
                relevant = {d for d, g in judged.items() if g > 0}
                top = sorted(runs[q].items(), key=lambda kv: kv[1], reverse=True)[: int(k)]
                out[m][q] = next((1.0 / r for r, (d, _) in enumerate(top, start=1) if d in relevant), 0.0)
        else:
            key = f"{trec[name]}_{k}"
            out[m] = {q: float(scores.get(q, {}).get(key, 0.0)) for q in qrels}
    return out


def first_relevant_rank(judged: dict[str, int], hits: dict[str, float]) -> int | None:
    """1-based rank of the first document with grade > 0 in ``hits`` (sorted by score, ties in
    order), or None when none was retrieved."""
    ranked = sorted(hits.items(), key=lambda kv: kv[1], reverse=True)
    return next((r for r, (d, _) in enumerate(ranked, start=1) if judged.get(d, 0) > 0), None)


def format_p_value(p: float, n_resamples: int = 10_000) -> str:
    """A bootstrap p-value as text: ``< 1e-4`` (for 10,000 resamples) when no resample crossed
    zero, since 0 only says the true value is below the test's resolution; else 4 decimals."""
    if p > 0:
        return f"{p:.4f}"
    floor = 1 / n_resamples
    exponent = math.log10(floor)
    return f"< 1e{int(exponent)}" if exponent == int(exponent) else f"< {floor:.2g}"


def paired_bootstrap(
    tuned: dict[str, float], base: dict[str, float], n_resamples: int = 10_000, seed: int = 0
) -> dict:
    """Paired bootstrap over queries of ``mean(tuned) − mean(base)``.

    Resamples the queries (with replacement) ``n_resamples`` times, as in Sakai (2006) and
    the IR significance-testing practice of comparing two systems on the same topics.

    Returns ``delta`` (points ×100), ``ci95_low``/``ci95_high`` (points, percentile interval),
    ``p_two_sided`` (share of resampled deltas on the other side of 0, doubled; 0 when none
    crossed), ``p_text`` (the same for people: ``< 1e-4`` instead of 0, see :func:`format_p_value`),
    ``queries`` and ``n_resamples``.
    """
    import numpy as np

    queries = sorted(set(tuned) & set(base))
    if not queries:
        raise ValueError("no query is scored for both systems")
    diff = np.array([tuned[q] - base[q] for q in queries])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(axis=1)
    observed = diff.mean()
    other_side = (means <= 0).mean() if observed > 0 else (means >= 0).mean()
    p = round(min(1.0, 2 * float(other_side)), 4)
    return {
        "delta": round(float(observed) * 100, 2),
        "ci95_low": round(float(np.percentile(means, 2.5)) * 100, 2),
        "ci95_high": round(float(np.percentile(means, 97.5)) * 100, 2),
        "p_two_sided": p,
        "p_text": format_p_value(p, n_resamples),
        "queries": len(queries),
        "n_resamples": n_resamples,
    }


def bootstrap_mean_ci(
    values: dict[str, float], n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` over queries resampled with replacement
    (the same resamples as :func:`paired_bootstrap` for the same queries and seed)."""
    import numpy as np

    arr = np.array([values[q] for q in sorted(values)])
    if arr.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n_resamples, len(arr)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def comparison_table(
    base: dict[str, float], tuned: dict[str, float], metrics=DEFAULT_METRICS
) -> pl.DataFrame:
    """One row per metric: base, fine-tuned, absolute delta (points ×100) and relative delta (%)."""
    rows = []
    for m in metrics:
        b, t = base.get(m), tuned.get(m)
        if b is None or t is None:
            continue
        rows.append(
            {
                "metric": m,
                "base": round(b, 4),
                "fine_tuned": round(t, 4),
                "delta_points": round((t - b) * 100, 2),
                "delta_relative_pct": round((t - b) / b * 100, 2) if b else None,
            }
        )
    return pl.DataFrame(rows)


def markdown_table(frame: pl.DataFrame) -> str:
    """Render a small frame as a GitHub Markdown table (Dagster metadata and README)."""
    cols = frame.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for row in frame.iter_rows():
        lines.append(
            "| "
            + " | ".join(
                "" if v is None else f"{v:+.2f}" if isinstance(v, float) and "delta" in c else str(v)
                for c, v in zip(cols, row, strict=True)
            )
            + " |"
        )
    return "\n".join(lines)


def compare_runs(qrels: Qrels, base_run: Run, tuned_run: Run, n_resamples: int = 10_000) -> dict:
    """Base against fine-tuned on one query set: both models' metrics (``base``,
    ``fine_tuned``), the comparison ``table`` (as dicts) and its ``markdown``, a paired bootstrap
    of every metric's gain (``significance``: is it more than query sampling noise?) and of the
    nDCG@10 gain on its own (``ndcg10_significance``), and the per-query values behind them
    (``per_query``: ``{"base"|"fine_tuned": {metric: {query_id: value}}}``), which a caller that
    stores the rest as JSON should keep apart (see :func:`embed_assets.evaluation.report.per_query_frame`)."""
    base, tuned = ir_metrics(qrels, base_run), ir_metrics(qrels, tuned_run)
    table = comparison_table(base, tuned)
    per_query = {
        "base": per_query_metrics(qrels, base_run),
        "fine_tuned": per_query_metrics(qrels, tuned_run),
    }
    significance = {
        m: paired_bootstrap(per_query["fine_tuned"][m], per_query["base"][m], n_resamples)
        for m in DEFAULT_METRICS
    }
    return {
        "base": base,
        "fine_tuned": tuned,
        "table": table.to_dicts(),
        "markdown": markdown_table(table),
        "significance": significance,
        "ndcg10_significance": significance["NDCG@10"],
        "per_query": per_query,
    }


def delta_points(comparison: dict, metric: str = "NDCG@10") -> float:
    """The fine-tuned model's gain on ``metric`` in a :func:`compare_runs` result, in points (×100)."""
    return (comparison["fine_tuned"][metric] - comparison["base"][metric]) * 100
