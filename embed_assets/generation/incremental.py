"""Incremental generation: questions already written for unchanged chunks are kept.

A chunk id is the hash of its text, so "unchanged" is exact. After a corpus change only the new
chunks get questions (no LLM call, no embedded-model sample for the rest, whatever the
generator), and the questions of deleted chunks leave. What an incremental run cannot give is
what a full run computes over the whole corpus at once: corpus-wide statistics (the structure
generator's idf) and multi-hop bundles mixing old and new chunks are computed over the new
chunks only. A full run (``synthetic_qa.incremental: false``) recomputes everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass
class IncrementalPlan:
    reused: pl.DataFrame  # earlier questions whose positives all still exist
    to_generate: pl.DataFrame  # chunks the earlier run never saw
    dropped: int  # earlier questions of deleted or changed chunks


def plan_incremental(
    previous_qa: pl.DataFrame, previous_chunk_ids: set[str], chunks: pl.DataFrame
) -> IncrementalPlan:
    """Split the work of a generation run that follows an earlier one.

    Args:
        previous_qa: the earlier run's questions (``positive_chunk_ids`` per row).
        previous_chunk_ids: the chunks the earlier run generated for.
        chunks: this run's chunks.
    """
    current = chunks["chunk_id"].to_list()
    keep = previous_qa.filter(pl.col("positive_chunk_ids").list.eval(pl.element().is_in(current)).list.all())
    return IncrementalPlan(
        reused=keep,
        to_generate=chunks.filter(~pl.col("chunk_id").is_in(list(previous_chunk_ids))),
        dropped=previous_qa.height - keep.height,
    )
