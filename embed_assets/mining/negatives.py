"""Positive-aware hard-negative mining (TopK-PercPos, NV-Retriever, Moreira et al. 2024).

For each query the base model's nearest chunks are candidates. A candidate is a
*hard* negative when it ranks high but scores clearly below the query's known
positives; anything scoring close to a positive is probably an unlabelled
positive (a false negative) and is dropped. NV-Retriever found a ceiling of
95% of the positive's score best, which is the default here.

Compared with ``sentence_transformers.util.mine_hard_negatives`` (which this
follows for parameter names), this miner (1) reads candidates from the product's
LanceDB index instead of an in-memory corpus, so memory stays bounded, (2)
excludes *every* positive of a multi-positive query, and (3) excludes the chunks
adjacent to a positive in the same document, which share overlapping text.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from embed_assets.index.chunk_index import ChunkIndex, search
from embed_assets.models import TextEncoder, text_encoder

NEGATIVES_SCHEMA = {
    "qa_id": pl.String,
    "question": pl.String,
    "positive_chunk_ids": pl.List(pl.String),
    "positive_score": pl.Float32,
    "negative_chunk_ids": pl.List(pl.String),
    "negative_scores": pl.List(pl.Float32),
}


@dataclass(frozen=True)
class MiningConfig:
    """Args:
    num_negatives: negatives kept per query (5 by default; 10 is supported).
    max_score_ratio: TopK-PercPos ceiling; a candidate scoring above
        ``max_score_ratio × positive score`` is dropped as a likely false negative.
    absolute_margin: optional TopK-MarginPos: also drop candidates above
        ``positive score − absolute_margin``.
    range_min / range_max: only candidates ranked in ``[range_min, range_max)``
        (0-based, after removing positives) are eligible.
    sampling: ``"top"`` takes the highest-ranked eligible candidates, ``"random"``
        samples them uniformly (seeded) from the eligible range.
    exclude_neighbours: also drop chunks adjacent (±1 chunk) to a positive in the
        same document: with overlapping chunks they contain the answer too.
    seed: for ``sampling="random"``.
    """

    num_negatives: int = 5
    max_score_ratio: float = 0.95
    absolute_margin: float | None = None
    range_min: int = 0
    range_max: int = 50
    sampling: Literal["top", "random"] = "top"
    exclude_neighbours: bool = True
    seed: int = 42

    def __post_init__(self) -> None:
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}")
        if not 0.0 < self.max_score_ratio <= 1.0:
            raise ValueError(f"max_score_ratio must be in (0, 1], got {self.max_score_ratio}")
        if self.absolute_margin is not None and self.absolute_margin < 0:
            raise ValueError(f"absolute_margin must be >= 0, got {self.absolute_margin}")
        if not 0 <= self.range_min < self.range_max:
            raise ValueError(f"need 0 <= range_min < range_max, got {self.range_min}, {self.range_max}")
        if self.sampling not in ("top", "random"):
            raise ValueError(f"sampling must be 'top' or 'random', got {self.sampling!r}")


def _lookup_chunks(index: ChunkIndex, chunk_ids: set[str]) -> dict[str, tuple[np.ndarray, str, int]]:
    """``chunk_id -> (vector, doc_id, chunk_index)`` for the given ids, read from LanceDB."""
    quoted = ", ".join("'" + c.replace("'", "''") + "'" for c in sorted(chunk_ids))
    rows = (
        index.open()
        .search()
        .where(f"chunk_id IN ({quoted})")
        .select(["chunk_id", "vector", "doc_id", "chunk_index"])
        .limit(len(chunk_ids))
        .to_arrow()
    )
    vectors = np.array(rows["vector"].to_pylist(), dtype=np.float32)
    return {
        c: (vectors[i], d, j)
        for i, (c, d, j) in enumerate(
            zip(
                rows["chunk_id"].to_pylist(),
                rows["doc_id"].to_pylist(),
                rows["chunk_index"].to_pylist(),
                strict=True,
            )
        )
    }


def _score_ceiling(pos_score: float, config: MiningConfig) -> float:
    """The highest score a candidate may have and still count as a negative of a query whose
    positive scores ``pos_score`` (TopK-PercPos, and TopK-MarginPos when a margin is set)."""
    ceiling = config.max_score_ratio * pos_score
    if config.absolute_margin is not None:
        ceiling = min(ceiling, pos_score - config.absolute_margin)
    return ceiling


def _eligible_negatives(
    hits: dict[str, list],
    cand_scores: np.ndarray,
    positives: list[str],
    near: set[tuple[str, int]],
    ceiling: float,
    config: MiningConfig,
    counts: Counter,
) -> list[tuple[str, float]]:
    """``(chunk_id, score)`` of one query's candidates that may serve as negatives, best first.

    Drops the query's positives, chunks next to a positive (``near``: their ``(doc_id,
    chunk_index)``), candidates outside ``[range_min, range_max)`` and any above ``ceiling``;
    ``counts`` gets how many each rule removed.
    """
    eligible: list[tuple[str, float]] = []
    rank = 0  # counted after positives and neighbours go, so the range is over real candidates
    for cid, doc, idx, s in zip(
        hits["chunk_id"], hits["doc_id"], hits["chunk_index"], cand_scores, strict=True
    ):
        counts["candidates"] += 1
        if cid in positives:
            counts["removed_positive"] += 1
            continue
        if any(doc == d and abs(idx - j) <= 1 for d, j in near):
            counts["removed_neighbour"] += 1
            continue
        in_range = config.range_min <= rank < config.range_max
        rank += 1
        if not in_range:
            continue
        if s > ceiling:
            counts["removed_by_ceiling"] += 1
            continue
        eligible.append((cid, float(s)))
    return eligible


def _choose_negatives(
    eligible: list[tuple[str, float]], config: MiningConfig, rng: random.Random
) -> list[tuple[str, float]]:
    """Up to ``num_negatives`` of ``eligible``: the first ones, or a seeded sample (best first)."""
    if config.sampling == "random" and len(eligible) > config.num_negatives:
        # Re-sorted by score so that sampled negatives come best first, like "top"'s.
        return sorted(rng.sample(eligible, config.num_negatives), key=lambda x: -x[1])
    return eligible[: config.num_negatives]


def mine_hard_negatives(
    queries: pl.DataFrame,
    model,
    index: ChunkIndex,
    config: MiningConfig | None = None,
    *,
    batch_size: int = 256,
    embed: TextEncoder | None = None,
) -> tuple[pl.DataFrame, dict[str, int], dict[str, list[float]]]:
    """Mine negatives for each row of ``queries`` (``qa_id, question, positive_chunk_ids``).

    Works in batches of ``batch_size`` queries: memory is O(batch × candidates). ``embed`` gives
    the questions' vectors by ``model`` (default: encode them; the asset passes its embedding
    cache, which holds the quality filter's).

    Returns:
        ``(frame, counts, scores)``: the frame has ``NEGATIVES_SCHEMA``; ``counts`` says
        how many candidates each rule removed and how many queries got fewer
        negatives than asked; ``scores`` holds ``positive`` and ``negative`` score
        lists for distribution plots.
    """
    config = config or MiningConfig()
    rng = random.Random(config.seed)
    counts: Counter = Counter()
    dist: dict[str, list[float]] = {"positive": [], "negative": []}
    out: list[dict] = []
    k = config.range_max + 16  # headroom for positives and neighbours removed from the list
    for start in range(0, queries.height, batch_size):
        part = queries.slice(start, batch_size)
        positives = part["positive_chunk_ids"].to_list()
        all_pos = {c for p in positives for c in p}
        known = _lookup_chunks(index, all_pos)
        qvec = text_encoder(model, embed)(part["question"].to_list())
        for row, hits, cand_scores in search(index, qvec, k, columns=("chunk_id", "doc_id", "chunk_index")):
            pos = positives[row]
            pvs = [known[c][0] for c in pos if c in known]
            if not pvs:
                counts["queries_without_indexed_positive"] += 1
                continue
            pos_score = float(min(qvec[row] @ v for v in pvs))
            ceiling = _score_ceiling(pos_score, config)
            near = {known[c][1:] for c in pos if c in known} if config.exclude_neighbours else set()
            eligible = _eligible_negatives(hits, cand_scores, pos, near, ceiling, config, counts)
            chosen = _choose_negatives(eligible, config, rng)
            if len(chosen) < config.num_negatives:
                counts["queries_short_of_negatives"] += 1
            dist["positive"].append(pos_score)
            dist["negative"].extend(s for _, s in chosen)
            out.append(
                {
                    "qa_id": part["qa_id"][row],
                    "question": part["question"][row],
                    "positive_chunk_ids": pos,
                    "positive_score": pos_score,
                    "negative_chunk_ids": [c for c, _ in chosen],
                    "negative_scores": [s for _, s in chosen],
                }
            )
    return pl.DataFrame(out, schema=NEGATIVES_SCHEMA), dict(counts), dist
