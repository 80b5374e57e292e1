"""Evaluation and training reports from plain data: per-query tables and PNG charts.

Dagster-free: every function takes dicts, lists or frames and returns a frame, text or PNG
bytes; the assets attach them to their materializations. Charts are drawn with
matplotlib's object API on an Agg canvas (no display, no global pyplot state), so they
render the same in a worker, a test or a headless container.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
from matplotlib.ticker import MaxNLocator

from embed_assets.evaluation.metrics import (
    DEFAULT_METRICS,
    Qrels,
    Run,
    bootstrap_mean_ci,
    first_relevant_rank,
)
from embed_assets.hashing import stable_hash

BASE_COLOUR, TUNED_COLOUR = "#8c8c8c", "#1f77b4"
PER_QUERY_SCHEMA = {
    "query_set": pl.String,
    "query_id": pl.String,
    "query": pl.String,
    "relevant": pl.Int32,
    "base_rank": pl.Int32,
    "fine_tuned_rank": pl.Int32,
    "base_ndcg10": pl.Float64,
    "fine_tuned_ndcg10": pl.Float64,
    "ndcg10_delta": pl.Float64,
}


def metric_slug(metric: str) -> str:
    """``NDCG@10`` -> ``ndcg10``: the form metric names take in metadata keys."""
    return metric.lower().replace("@", "")


def query_set_version(queries: Mapping[str, str], qrels: Qrels, corpus_ids: Sequence[str]) -> str:
    """A content version of a test set: its query texts, judgments and the ids of the corpus
    searched (chunk ids are content hashes, so the ids stand for the texts). Two evaluations
    with the same version scored the same questions against the same documents."""
    return stable_hash(
        {"queries": dict(queries), "qrels": qrels, "corpus": sorted(corpus_ids)},
        length=8,
    )


def per_query_frame(
    query_set: str,
    queries: Mapping[str, str],
    qrels: Qrels,
    base_run: Run,
    tuned_run: Run,
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> pl.DataFrame:
    """One row per judged query: its text, the rank of the first relevant document for each
    model (null: not retrieved), and both models' nDCG@10 with the fine-tuned model's gain
    (``ndcg10_delta``, in nDCG units). ``per_query`` is :func:`compare_runs`' ``per_query``."""
    base, tuned = per_query["base"]["NDCG@10"], per_query["fine_tuned"]["NDCG@10"]
    rows = [
        {
            "query_set": query_set,
            "query_id": q,
            "query": queries.get(q, ""),
            "relevant": sum(1 for g in judged.values() if g > 0),
            "base_rank": first_relevant_rank(judged, base_run.get(q, {})),
            "fine_tuned_rank": first_relevant_rank(judged, tuned_run.get(q, {})),
            "base_ndcg10": base[q],
            "fine_tuned_ndcg10": tuned[q],
            "ndcg10_delta": tuned[q] - base[q],
        }
        for q, judged in qrels.items()
    ]
    return pl.DataFrame(rows, schema=PER_QUERY_SCHEMA).sort(
        "ndcg10_delta", "query_id", descending=[True, False]
    )


def top_movers(frame: pl.DataFrame, n: int = 10) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``n`` queries that gained most and the ``n`` that lost most nDCG@10 (only queries
    that moved: a query with delta 0 is in neither)."""
    cols = ["query", "base_rank", "fine_tuned_rank", "ndcg10_delta"]
    gained = frame.filter(pl.col("ndcg10_delta") > 0).sort(
        "ndcg10_delta", "query_id", descending=[True, False]
    )
    lost = frame.filter(pl.col("ndcg10_delta") < 0).sort("ndcg10_delta", "query_id")
    return gained.head(n).select(cols), lost.head(n).select(cols)


def integer_bins(values: Sequence[float]) -> np.ndarray:
    """Histogram edges for whole numbers: one bin per integer, centred on it (k - 0.5, k + 0.5)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return np.array([0.5, 1.5])
    return np.arange(np.floor(arr.min()) - 0.5, np.ceil(arr.max()) + 1.0, 1.0)


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that shows ``png`` inline (a ``data:`` URI; the Dagster UI renders it)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _figure(rows: int, cols: int, width: float = 6.0, height: float = 3.6):
    from matplotlib.figure import Figure

    return Figure(figsize=(width * cols, height * rows), layout="constrained")


def _metric_bars(ax, name: str, comparison: Mapping, metrics: Sequence[str]) -> None:
    """Base vs fine-tuned bars per metric on ``ax``, with 95% bootstrap intervals of each mean
    and the paired-bootstrap gain written above each pair."""
    per_query, sig = comparison["per_query"], comparison["significance"]
    x = np.arange(len(metrics))
    for offset, side, colour, label in (
        (-0.2, "base", BASE_COLOUR, "base"),
        (0.2, "fine_tuned", TUNED_COLOUR, "fine-tuned"),
    ):
        means = [comparison[side][m] for m in metrics]
        cis = [bootstrap_mean_ci(per_query[side][m]) for m in metrics]
        # Error bars are distances from the mean; clamp at 0 so a degenerate CI draws nothing.
        err = np.array(
            [[max(0.0, mu - lo), max(0.0, hi - mu)] for mu, (lo, hi) in zip(means, cis, strict=True)]
        )
        ax.bar(x + offset, means, 0.4, yerr=err.T, capsize=2, color=colour, label=label)
    for i, m in enumerate(metrics):
        s = sig[m]
        top = max(comparison["base"][m], comparison["fine_tuned"][m])
        ax.annotate(
            f"{s['delta']:+.1f}\n[{s['ci95_low']:+.1f}, {s['ci95_high']:+.1f}]",
            (i, min(top + 0.08, 1.12)),  # capped so the label stays inside the 0..1.25 axis
            ha="center",
            fontsize=6.5,
        )
    ax.set_xticks(x, metrics, fontsize=7)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("score")
    ax.legend(fontsize=7, loc="lower right")
    queries = next(iter(per_query["base"].values()), {})
    ax.set_title(f"{name} ({len(queries)} queries): gain in points, 95% paired-bootstrap CI", fontsize=9)


def _gain_histogram(ax, name: str, frame: pl.DataFrame | None) -> None:
    """Histogram of the per-query nDCG@10 gains (points) of ``frame`` on ``ax``, with their mean."""
    deltas = frame["ndcg10_delta"].to_numpy() * 100 if frame is not None else np.array([])
    ax.hist(deltas, bins=np.linspace(-100, 100, 41), color=TUNED_COLOUR, edgecolor="white")
    ax.axvline(0, color="black", linewidth=0.8)
    if deltas.size:
        ax.axvline(deltas.mean(), color="#d62728", linestyle="--", label=f"mean {deltas.mean():+.2f}")
        ax.legend(fontsize=7)
    ax.set_xlabel("per-query nDCG@10 gain (points)")
    ax.set_ylabel("queries")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(
        f"{name}: {int((deltas > 0).sum())} gained, {int((deltas < 0).sum())} lost, "
        f"{int((deltas == 0).sum())} unchanged",
        fontsize=9,
    )


def _general_domain_bars(ax, general: Mapping) -> None:
    """Base vs fine-tuned nDCG@10 on the general-domain set, titled with the forgetting."""
    values = [general["base"], general["fine_tuned"]]
    ax.barh(["base", "fine-tuned"], values, color=[BASE_COLOUR, TUNED_COLOUR])
    for y, v in enumerate(values):
        ax.annotate(f"{v:.3f}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("nDCG@10")
    drop = (general["base"] - general["fine_tuned"]) * 100
    ax.set_title(
        f"general domain ({general['queries']} queries): "
        + (f"forgot {drop:.2f} points" if drop > 0 else f"no forgetting ({-drop:+.2f} points)"),
        fontsize=9,
    )


def evaluation_report_png(
    comparisons: Mapping[str, Mapping],
    frames: Mapping[str, pl.DataFrame],
    general: Mapping | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> bytes:
    """The evaluation report: for each query set (``comparisons``: name -> :func:`compare_runs`
    result; ``frames``: name -> :func:`per_query_frame`), a panel of per-metric bars, base vs
    fine-tuned, with 95% bootstrap intervals of each mean and the gain with its paired-bootstrap
    interval written above; and a histogram of the per-query nDCG@10 gains. With ``general``
    (``{"base": x, "fine_tuned": y, "queries": n}``, nDCG@10) a last row shows the
    general-domain set, where a drop is forgetting."""
    names = list(comparisons)
    rows = len(names) + (1 if general else 0)
    fig = _figure(rows, 2)
    axes = fig.subplots(rows, 2, squeeze=False)
    for row, name in enumerate(names):
        bar_ax, hist_ax = axes[row]
        _metric_bars(bar_ax, name, comparisons[name], metrics)
        _gain_histogram(hist_ax, name, frames.get(name))
    if general:
        ax, note = axes[-1]
        _general_domain_bars(ax, general)
        note.axis("off")
    return _png(fig)


def training_curves_png(history: Sequence[Mapping]) -> bytes | None:
    """Training loss per logging step and the validation metric per evaluation, from the
    trainer's log history (``[{"step", "loss"} | {"step", "eval_val_cosine_ndcg@10", "eval_loss"?}]``);
    None when the history has no loss. A validation loss is drawn when the history has one
    (``eval_loss``); the trainer scores validation by retrieval (nDCG@10), drawn on its own axis."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    if not train:
        return None
    val_loss = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    val_ndcg = [
        (h["step"], h["eval_val_cosine_ndcg@10"])
        for h in history
        if "eval_val_cosine_ndcg@10" in h and "step" in h
    ]
    fig = _figure(1, 1, width=7.0, height=3.6)
    ax = fig.subplots()
    ax.plot(*zip(*train, strict=True), marker="o", markersize=3, color=TUNED_COLOUR, label="training loss")
    if val_loss:
        ax.plot(
            *zip(*val_loss, strict=True), marker="s", markersize=3, color="#ff7f0e", label="validation loss"
        )
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if val_ndcg:
        right = ax.twinx()
        right.plot(*zip(*val_ndcg, strict=True), marker="^", color="#2ca02c", label="validation nDCG@10")
        right.set_ylabel("validation nDCG@10")
        h2, l2 = right.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.set_title("training and validation curves", fontsize=10)
    return _png(fig)


def distributions_png(panels: Sequence[tuple[str, Sequence[float | None], bool]], title: str = "") -> bytes:
    """One histogram per ``(label, values, whole_numbers)`` panel; ``whole_numbers`` gives one
    bin per integer (ranks, judge grades) instead of fractional bins. Missing values are
    counted in the panel's title."""
    fig = _figure(1, len(panels), width=4.2, height=3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, values, whole) in zip(axes, panels, strict=True):
        present = [float(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
        missing = len(values) - len(present)
        if present:
            ax.hist(
                present, bins=integer_bins(present) if whole else 20, color=TUNED_COLOUR, edgecolor="white"
            )
            if whole:
                lo, hi = int(min(present)), int(max(present))
                ax.set_xticks(range(lo, hi + 1, max(1, (hi - lo + 1) // 10)))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(label)
        ax.set_ylabel("count")
        ax.set_title(f"{label}" + (f" ({missing} missing)" if missing else ""), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def overlaid_distributions_png(series: Mapping[str, Sequence[float]], xlabel: str, title: str = "") -> bytes:
    """Several distributions on one axis with shared bins (e.g. positive vs negative scores)."""
    fig = _figure(1, 1, width=6.0, height=3.4)
    ax = fig.subplots()
    arrays = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    every = np.concatenate([a for a in arrays.values() if a.size] or [np.array([0.0, 1.0])])
    bins = np.linspace(every.min(), every.max() if every.max() > every.min() else every.min() + 1, 31)
    for label, arr in arrays.items():
        if arr.size:
            ax.hist(arr, bins=bins, alpha=0.6, label=f"{label} ({arr.size})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _png(fig)
