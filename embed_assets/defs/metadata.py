"""Helpers that turn plain results into Dagster metadata."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from embed_assets.evaluation.metrics import markdown_table
from embed_assets.evaluation.report import integer_bins, markdown_image


def preview(frame: pl.DataFrame, n: int = 10, max_chars: int = 120) -> dg.MetadataValue:
    """A Markdown preview of the first ``n`` rows, long strings shortened."""
    if frame.height == 0:
        return dg.MetadataValue.md("_empty_")

    def as_text(c: str) -> pl.Expr:
        col = pl.col(c)
        if isinstance(frame.schema[c], pl.List):
            col = col.list.eval(pl.element().cast(pl.String)).list.join(", ")
        return col.cast(pl.String).str.slice(0, max_chars).str.replace_all(r"[\n|]", " ")

    head = frame.head(n).with_columns([as_text(c) for c in frame.columns])
    return dg.MetadataValue.md(markdown_table(head))


def histogram(values, bins: int = 10, label: str = "value", whole_numbers: bool = False) -> dg.MetadataValue:
    """A Markdown histogram table (bin range and count). ``whole_numbers``: one bin per integer
    (ranks, grades), labelled by the integer, instead of ``bins`` fractional bins."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return dg.MetadataValue.md("_no values_")
    if whole_numbers:
        edges = integer_bins(arr)
        counts, _ = np.histogram(arr, bins=edges)
        names = [f"{int(edges[i] + 0.5)}" for i in range(len(counts))]
    else:
        counts, edges = np.histogram(arr, bins=bins)
        names = [f"{edges[i]:.3f} – {edges[i + 1]:.3f}" for i in range(len(counts))]
    rows = [
        f"| {name} | {c} | {'█' * int(40 * c / max(counts.max(), 1))} |"
        for name, c in zip(names, counts, strict=True)
    ]
    return dg.MetadataValue.md(f"| {label} | count | |\n| --- | --- | --- |\n" + "\n".join(rows))


def image(png: bytes, path: Path, alt: str) -> dict[str, dg.MetadataValue]:
    """Write ``png`` to ``path`` and return metadata that shows it inline in the Dagster UI
    (``<alt>``: Markdown with the image as a ``data:`` URI, which the UI's Markdown renderer
    allows) and names the file (``<alt>_path``), for a reader outside the UI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return {
        alt: dg.MetadataValue.md(markdown_image(png, alt)),
        f"{alt}_path": dg.MetadataValue.path(str(path.resolve())),
    }


def counts_table(counts: dict, key: str = "reason") -> dg.MetadataValue:
    if not counts:
        return dg.MetadataValue.md("_none_")
    return dg.MetadataValue.md(
        f"| {key} | count |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in sorted(counts.items()))
    )


def stage_metrics(start: float) -> dict[str, float]:
    """Wall time since ``start`` (a ``time.perf_counter()`` value) and the process's peak RSS so far."""
    return {
        "wall_seconds": round(time.perf_counter() - start, 2),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
