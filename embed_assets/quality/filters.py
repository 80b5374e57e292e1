"""Model-free quality signals for synthetic pairs, and the keep/drop decision.

- **Round-trip consistency** (Alberti et al. 2019; Promptagator, Dai et al. 2022):
  the base model must retrieve one of the question's positives within the top
  ``k`` chunks of the whole corpus. A question that the base model cannot even
  place is usually vague or wrong, and training on it adds noise.
- **Lexical second opinion**: the base model's own round trip keeps only what the
  base model can already answer, which is the wrong bias for a product whose point is
  the vocabulary the base model misses (error codes, config names, product ids). A
  question it cannot place is kept too when BM25 (:mod:`~embed_assets.index.lexical`)
  ranks a positive within its top ``lexical_top_k``: such a question is specific, not
  vague, and it is what fine-tuning should teach. It also keeps the held-out test split
  from holding only questions the base model already gets right.
- **Answer support**: the share of the answer's content words found in the
  positive chunks; an answer the chunk does not support is a hallucination.
- **Near-duplicate questions**: questions whose embeddings have cosine ≥ 0.9
  with an earlier kept question add no signal and bias the batch.
- **Answer faithfulness** (optional; :mod:`~embed_assets.quality.faithfulness`):
  ragas' share of the answer's claims that the positives support, when it was scored.

Every pair keeps its scores; ``kept`` and ``drop_reason`` record the decision,
so metadata can count drops per reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from embed_assets.index.chunk_index import ChunkIndex, search
from embed_assets.index.lexical import lexical_ranks
from embed_assets.models import TextEncoder, text_encoder

_WORD = re.compile(r"[a-z0-9_]{3,}")
# Rows up to which near_duplicates compares every pair exactly. Up to here exact is no slower than
# the index (1.7 s each at 14,368 questions; 3.4 s against 5.6 s at 21,552, 40.5 s against 11.8 s at
# 71,840: benchmarks/bench_near_duplicates.py), and the default run's 7,184 keep their exact result.
EXACT_DEDUP_MAX_ROWS = 20_000
# The index's search radius sits this far below the threshold: its 8-bit codes moved a cosine by
# 0.0005 (standard deviation), at most 0.015, on the benchmark's 71,840 vectors. Each candidate's exact
# cosine is checked, so the margin costs a little checking, never a pair below the threshold.
_SQ8_MARGIN = 0.02
_ROWS_PER_LIST = 256  # rows per IVF list: a row's search scans nprobe lists of about this size
_KMEANS_ROUNDS = 4
_SQ8_TRAIN_ROWS = 20_000  # rows whose ranges train the 8-bit codes (30 MB of 384-dim float32)
_ANN_BATCH = 4096  # rows added or searched per call: bounds the float32 copies to ~6 MB
_RECHECK_BATCH = 16_384  # candidate pairs whose exact cosine is computed at once (~50 MB)


@dataclass(frozen=True)
class QualityConfig:
    """Args:
    roundtrip_top_k: a positive must be among the base model's top-k chunks...
    lexical_top_k: ...or among BM25's top-k chunks (0 = the base model's round trip alone).
    min_score: pairs whose combined score is below this are dropped. The score is
        the round-trip reciprocal rank (1 = positive ranked first), averaged with
        the LLM judge's overall/10 when a judge ran.
    dedup_cosine: questions at or above this cosine to a kept one are duplicates.
    min_answer_support: minimum share of answer words present in the positives
        (only checked for pairs that have an answer).
    min_judge_overall: LLM-judge overall score (1–10) a pair needs, when a judge ran.
    min_faithfulness: ragas faithfulness (0–1, share of the answer's claims the positives
        support) a pair needs, when it was scored; 0 disables the check.
    """

    roundtrip_top_k: int = 10
    lexical_top_k: int = 10
    min_score: float = 0.0
    dedup_cosine: float = 0.9
    min_answer_support: float = 0.5
    min_judge_overall: float = 7.0
    min_faithfulness: float = 0.0

    def __post_init__(self) -> None:
        if self.roundtrip_top_k < 1:
            raise ValueError(f"roundtrip_top_k must be >= 1, got {self.roundtrip_top_k}")
        if self.lexical_top_k < 0:
            raise ValueError(f"lexical_top_k must be >= 0, got {self.lexical_top_k}")
        for name in ("min_score", "dedup_cosine", "min_answer_support", "min_faithfulness"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not 1.0 <= self.min_judge_overall <= 10.0:
            raise ValueError(f"min_judge_overall must be in [1, 10], got {self.min_judge_overall}")


def roundtrip_ranks(
    question_vectors: np.ndarray, positives: list[list[str]], index: ChunkIndex, k: int
) -> list[int | None]:
    """1-based rank of the best-ranked positive among the top ``k``, else None."""
    ranks: list[int | None] = [None] * len(positives)
    for row, hits, _ in search(index, question_vectors, k):
        pos = set(positives[row])
        ranks[row] = next((r + 1 for r, cid in enumerate(hits["chunk_id"]) if cid in pos), None)
    return ranks


def answer_support(answer: str, positive_texts: list[str]) -> float | None:
    words = set(_WORD.findall(answer.lower()))
    if not words:
        return None
    context = " ".join(positive_texts).lower()
    return sum(w in context for w in words) / len(words)


def near_duplicates(
    vectors: np.ndarray,
    order: np.ndarray,
    threshold: float,
    block: int = 512,
    *,
    exact_max_rows: int = EXACT_DEDUP_MAX_ROWS,
    nprobe: int = 8,
) -> np.ndarray:
    """Boolean mask: True where a row duplicates an earlier row in ``order``.

    Greedy in priority order: a row is a duplicate if its cosine with any kept,
    higher-priority row is ≥ ``threshold``.

    Two passes, so that the work is matrix products and not one product per row against
    every kept row (which took most of the quality stage on 40,000 questions): first every
    pair above the threshold, then the greedy pass over those pairs, which are few. Up to
    ``exact_max_rows`` rows the pairs are found exactly, block by block in priority order
    (memory O(block × rows), time quadratic). Above it an approximate index finds them (faiss
    IVF; memory: its 8-bit codes, a quarter of ``vectors``, and the pairs; time about linear):
    each row's range search returns every indexed row within the radius in the lists it probes,
    not only its k nearest, since a question can have dozens of near-copies (the default run's
    have up to 46), and each candidate's exact cosine is checked.

    Recall trade-off of the approximate path: a pair whose rows fall in IVF lists neither of them
    probes is missed (a pair counts when either side finds it). A missed pair can keep a row that
    the exact path drops and, rarely, through that kept row, drop one the exact path keeps; a pair
    below the threshold is never used. ``benchmarks/bench_near_duplicates.py`` measures the
    recall of duplicate rows against the exact path.

    Args:
        vectors: ``(rows, dim)`` unit-normalised embeddings (cosine is the dot product).
        order: the rows in priority order (a permutation of ``range(rows)``): earlier rows are
            kept first.
        threshold: cosine at or above which a row duplicates a kept one. Meant for near
            duplicates (0.9): the pairs above it are held in memory, so a low threshold costs
            memory on either path.
        block: rows per matrix product on the exact path.
        exact_max_rows: compare every pair up to this many rows; above it, the approximate index.
        nprobe: IVF lists (of about 256 rows each) each row searches on the approximate path: more
            find more pairs, in proportionally more time.
    """
    if len(vectors) <= exact_max_rows:
        ranked = np.ascontiguousarray(vectors[order], dtype=np.float32)
        later, earlier = _exact_pairs(ranked, threshold, block)
    else:
        later, earlier = _approximate_pairs(vectors, order, threshold, nprobe)
    dup_ranked = _greedy(len(vectors), later, earlier)
    dup = np.zeros(len(vectors), dtype=bool)
    dup[order] = dup_ranked
    return dup


def _exact_pairs(
    ranked: np.ndarray, threshold: float, block: int, from_row: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of priority positions ``(later, earlier)`` whose cosine reaches ``threshold``:
    ``ranked`` (the rows in priority order) by blocks of ``block`` rows times every row before them.
    ``from_row`` skips the blocks before it (a benchmark times the last, largest blocks alone)."""
    later, earlier = [], []
    for start in range(from_row, len(ranked), block):
        stop = min(start + block, len(ranked))
        sims = ranked[start:stop] @ ranked[:stop].T
        rows, cols = np.nonzero(sims >= threshold)
        before = cols < rows + start  # only higher-priority rows count
        later.append(rows[before] + start)
        earlier.append(cols[before])
    return _concat(later), _concat(earlier)


def _approximate_pairs(
    vectors: np.ndarray, order: np.ndarray, threshold: float, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of :func:`_exact_pairs` that a faiss IVF index with 8-bit codes finds.

    faiss and not LanceDB (the product's store): deduplication searches with every row, and on
    the benchmark's 71,840 vectors (8 lists probed, 2 busy cores) LanceDB's IVF_SQ built in 10.6 s
    and answered 974 rows/s (74 s for them all; IVF_PQ: 144 s, 264 rows/s), where this function
    takes 11.8 s in all.
    """
    import faiss

    n, dim = vectors.shape
    # Lists of a fixed size, so a row's search costs the same at any scale; the coarse quantizer
    # is an HNSW graph, so finding a row's lists stays cheap however many there are.
    nlist = max(1, n // _ROWS_PER_LIST)
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT),
        dim,
        nlist,
        faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
    )
    # Near duplicates land in one list or its neighbours under any fair partition: 4 k-means rounds
    # on 39 rows a list (faiss' minimum) balance the lists as well as 10 did on the benchmark's 100x
    # vectors, in half the time. The 8-bit codes' per-dimension ranges train on every sampled row.
    index.cp.niter = _KMEANS_ROUNDS
    index.cp.max_points_per_centroid = 39
    size = min(n, max(39 * nlist, _SQ8_TRAIN_ROWS))
    train = np.sort(np.random.default_rng(0).choice(n, size=size, replace=False))
    index.train(_ranked_rows(vectors, order[train]))
    for start in range(0, n, _ANN_BATCH):
        index.add(_ranked_rows(vectors, order[start : start + _ANN_BATCH]))
    index.nprobe = nprobe
    # Rows are searched list by list: a batch then probes a few neighbouring lists, which stay in
    # the CPU's cache, instead of lists all over the index.
    lists = index.invlists
    by_list = np.concatenate(
        [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).astype(np.int64) for i in range(nlist)]
    )
    keys = []
    for start in range(0, n, _ANN_BATCH):
        batch = by_list[start : start + _ANN_BATCH]
        lims, _, found = index.range_search(_ranked_rows(vectors, order[batch]), threshold - _SQ8_MARGIN)
        query = np.repeat(batch, np.diff(lims.astype(np.int64)))
        hi, lo = np.maximum(query, found), np.minimum(query, found)
        hi, lo = hi[hi != lo], lo[hi != lo]
        ok = _cosines(vectors, order[hi], order[lo]) >= threshold
        keys.append(hi[ok] * n + lo[ok])
    # A pair found from both of its rows comes twice.
    pairs = np.unique(_concat(keys))
    return pairs // n, pairs % n


def _ranked_rows(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def _cosines(vectors: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact cosine of each pair of rows ``(a[i], b[i])``, ``_RECHECK_BATCH`` pairs at a time."""
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), _RECHECK_BATCH):
        pair = slice(s, s + _RECHECK_BATCH)
        out[pair] = np.einsum("ij,ij->i", _ranked_rows(vectors, a[pair]), _ranked_rows(vectors, b[pair]))
    return out


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _greedy(rows: int, later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """The greedy pass over pairs of priority positions: a position is a duplicate when one of
    its earlier partners is kept. Every earlier position is decided before a later one."""
    dup = np.zeros(rows, dtype=bool)
    if not len(later):
        return dup
    by_later = np.argsort(later, kind="stable")
    later, earlier = later[by_later], earlier[by_later]
    starts = np.flatnonzero(np.diff(later, prepend=-1))
    for p, partners in zip(later[starts], np.split(earlier, starts[1:]), strict=True):
        dup[p] = not dup[partners].all()  # a kept earlier partner
    return dup


def _lexical_second_opinion(
    qa: pl.DataFrame, positives: list[list[str]], ranks: list[int | None], index: ChunkIndex, top_k: int
) -> list[int | None]:
    """BM25's rank of each pair's best positive within ``top_k``, for the pairs the base model's
    round trip missed; None elsewhere (found by the model, or not in BM25's top ``top_k``)."""
    lexical: list[int | None] = [None] * qa.height
    # Only the base model's misses need the second opinion.
    misses = [i for i, r in enumerate(ranks) if r is None]
    found = lexical_ranks([qa["question"][i] for i in misses], [positives[i] for i in misses], index, top_k)
    for i, r in zip(misses, found, strict=True):
        lexical[i] = r
    return lexical


def _answer_supports(
    qa: pl.DataFrame, chunks: pl.DataFrame, positives: list[list[str]]
) -> list[float | None]:
    """:func:`answer_support` of each pair's answer in its positives' texts (None: no answer)."""
    text_of = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    return [
        answer_support(a, [text_of.get(c, "") for c in p]) if a else None
        for a, p in zip(qa["answer"], positives, strict=True)
    ]


def _combined_score(qa: pl.DataFrame, ranks: list[int | None]) -> np.ndarray:
    """The round trip's reciprocal rank, averaged with the judge's overall/10 where a judge ran."""
    rr = np.array([1.0 / r if r else 0.0 for r in ranks])
    if "judge_overall" not in qa.columns:
        return rr
    judge = qa["judge_overall"].fill_null(0).to_numpy() / 10.0
    return np.where(qa["judge_overall"].is_null().to_numpy(), rr, (rr + judge) / 2)


def _drop_reasons(
    qa: pl.DataFrame,
    ranks: list[int | None],
    lexical: list[int | None],
    support: list[float | None],
    score: np.ndarray,
    dup: np.ndarray,
    config: QualityConfig,
) -> list[str | None]:
    """Each pair's drop reason, None for a kept pair. The checks run in a fixed order and the
    first that fails names the reason, so every dropped pair is counted under one reason."""
    faithfulness = qa["ragas_faithfulness"].to_list() if "ragas_faithfulness" in qa.columns else None
    reasons: list[str | None] = []
    for i in range(qa.height):
        if ranks[i] is None and lexical[i] is None:
            reasons.append("roundtrip_miss")
        elif support[i] is not None and support[i] < config.min_answer_support:
            reasons.append("answer_unsupported")
        elif score[i] < config.min_score:
            reasons.append("below_min_score")
        elif (
            "judge_overall" in qa.columns
            and qa["judge_overall"][i] is not None
            and qa["judge_overall"][i] < config.min_judge_overall
        ):
            reasons.append("judge_below_threshold")
        elif (
            faithfulness is not None
            and faithfulness[i] is not None
            and faithfulness[i] < config.min_faithfulness
        ):
            reasons.append("unfaithful_answer")
        elif dup[i]:
            reasons.append("near_duplicate")
        else:
            reasons.append(None)
    return reasons


def score_pairs(
    qa: pl.DataFrame,
    chunks: pl.DataFrame,
    model,
    index: ChunkIndex,
    config: QualityConfig,
    *,
    embed: TextEncoder | None = None,
) -> pl.DataFrame:
    """Add quality columns to ``qa`` and decide which pairs to keep.

    Added columns: ``roundtrip_rank`` (null = not in top k), ``lexical_rank`` (BM25's, null =
    not in its top ``lexical_top_k`` or not asked), ``answer_support``,
    ``duplicate`` (bool), ``score`` (0..1), ``kept`` (bool), ``drop_reason``.
    If ``qa`` already has ``judge_overall`` (1–10), it enters the score. If it has
    ``ragas_faithfulness`` (0–1), pairs scored below ``min_faithfulness`` are dropped
    (``unfaithful_answer``); null (unscored) pairs are judged by the other signals.
    ``embed`` gives the questions' vectors by ``model`` (default: encode them; the asset passes
    its embedding cache, so later stages reuse them).
    """
    if qa.height == 0:
        return qa.with_columns(
            pl.lit(None, pl.Int32).alias("roundtrip_rank"),
            pl.lit(None, pl.Int32).alias("lexical_rank"),
            pl.lit(None, pl.Float64).alias("answer_support"),
            pl.lit(False).alias("duplicate"),
            pl.lit(0.0).alias("score"),
            pl.lit(False).alias("kept"),
            pl.lit(None, pl.String).alias("drop_reason"),
        )
    qvec = text_encoder(model, embed)(qa["question"].to_list())
    positives = qa["positive_chunk_ids"].to_list()
    ranks = roundtrip_ranks(qvec, positives, index, config.roundtrip_top_k)
    lexical: list[int | None] = (
        _lexical_second_opinion(qa, positives, ranks, index, config.lexical_top_k)
        if config.lexical_top_k
        else [None] * qa.height
    )
    support = _answer_supports(qa, chunks, positives)
    score = _combined_score(qa, ranks)
    # Dedup in priority order: best score first, then original order for ties.
    order = np.lexsort((np.arange(len(score)), -score))
    dup = near_duplicates(qvec, order, config.dedup_cosine)
    reasons = _drop_reasons(qa, ranks, lexical, support, score, dup, config)
    return qa.with_columns(
        pl.Series("roundtrip_rank", ranks, dtype=pl.Int32),
        pl.Series("lexical_rank", lexical, dtype=pl.Int32),
        pl.Series("answer_support", support, dtype=pl.Float64),
        pl.Series("duplicate", dup),
        pl.Series("score", score.round(4)),
        pl.Series("kept", [r is None for r in reasons]),
        pl.Series("drop_reason", reasons, dtype=pl.String),
    )


def filter_summary(scored: pl.DataFrame) -> dict:
    """Counts of a :func:`score_pairs` result: ``kept``, ``kept_by_lexical_only`` (kept
    although the base model missed the positive, on BM25's word: the vocabulary to learn) and
    ``dropped`` (drop reason -> pairs, sorted by reason)."""
    kept = scored.filter(pl.col("kept"))
    return {
        "kept": kept.height,
        "kept_by_lexical_only": kept.filter(pl.col("roundtrip_rank").is_null()).height,
        "dropped": dict(sorted(scored.group_by("drop_reason").len().drop_nulls().rows())),
    }
