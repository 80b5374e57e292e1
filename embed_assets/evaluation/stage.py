"""Base against fine-tuned: the ``retrieval_eval`` stage, Dagster-free.

Both models answer the held-out generated test questions over the whole chunk corpus and, when
given, queries written by people (a document scores its best chunk); the teacher, when there is
one, answers the same queries zero-shot beside them; both models also answer a small
general-domain set, to see what fine-tuning forgot; and the no-regression gate holds every query
set to every gate metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from embed_assets.evaluation.gate import GateResult, no_regression
from embed_assets.evaluation.general import general_retrieval_set
from embed_assets.evaluation.labelled import LabelledQueries, document_run
from embed_assets.evaluation.metrics import compare_runs, ir_metrics
from embed_assets.evaluation.report import per_query_frame, query_set_version
from embed_assets.evaluation.retrieval import retrieve

SYNTHETIC, LABELLED = "synthetic test split", "labelled queries"
SET_KEYS = {SYNTHETIC: "synthetic", LABELLED: "labelled"}  # short names in metadata keys and tags

# score(queries, candidates, depth) -> run: the teacher zero-shot, reranking the base's candidates
TeacherScore = Callable[[dict, dict, int], dict]


class Side(NamedTuple):
    """One model under evaluation: the model, its vectors of the corpus (in corpus order), and how
    it embeds other texts (None: the model encodes them)."""

    model: Any
    corpus_vectors: np.ndarray | None
    embed: Callable | None = None


@dataclass(frozen=True)
class QuerySetResult:
    """Both models on one query set: ``queries`` scored, ``comparison`` is :func:`compare_runs`'
    result, ``frame`` the per-query ranks and scores, ``version`` the set's content hash,
    ``teacher`` the teacher's metrics (None without one)."""

    queries: int
    comparison: dict
    frame: pl.DataFrame
    version: str
    teacher: dict[str, float] | None = None


@dataclass(frozen=True)
class Evaluation:
    """Every query set's result (:data:`SYNTHETIC` first, :data:`LABELLED` when given), the
    general-domain scores and the gate's verdict."""

    sets: dict[str, QuerySetResult]
    general: dict
    gate: GateResult

    @property
    def forgetting_points(self) -> float:
        """General-domain nDCG@10 points fine-tuning lost (unrounded, for the check's threshold)."""
        return (self.general["base"] - self.general["fine_tuned"]) * 100


def evaluate_models(
    sides: dict[str, Side],
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    top_k: int,
    gate_metrics: list[str],
    tolerance_points: float = 0.0,
    labelled: LabelledQueries | None = None,
    chunk_document: dict[str, str] | None = None,
    teacher_score: TeacherScore | None = None,
) -> Evaluation:
    """Score the ``base`` and ``fine_tuned`` sides and gate the second against the first.

    Args:
        sides: ``{"base": Side, "fine_tuned": Side}``.
        corpus, queries, qrels: the synthetic test split in BEIR form (chunk ids).
        top_k: documents retrieved per query (Recall@100 needs 100).
        gate_metrics: metrics the gate holds every query set to.
        tolerance_points: how far below the base a gate metric may fall.
        labelled: queries written by people, judged on documents; ``chunk_document`` then maps
            each chunk to its document.
        teacher_score: the teacher zero-shot (not gated: it shows how far the student got).
    """

    def run(side: str, qs: dict, depth: int) -> dict:
        model, vectors, embed = sides[side]
        return retrieve(model, corpus, qs, top_k=depth, corpus_vectors=vectors, embed=embed)

    base_run, tuned_run = run("base", queries, top_k), run("fine_tuned", queries, top_k)
    synthetic = compare_runs(qrels, base_run, tuned_run)
    teacher = ir_metrics(qrels, teacher_score(queries, base_run, top_k)) if teacher_score else None
    sets = {
        SYNTHETIC: QuerySetResult(
            len(queries),
            synthetic,
            per_query_frame("synthetic", queries, qrels, base_run, tuned_run, synthetic["per_query"]),
            query_set_version(queries, qrels, list(corpus)),
            teacher,
        )
    }
    if labelled is not None:
        sets[LABELLED] = _labelled(run, labelled, chunk_document or {}, list(corpus), top_k, teacher_score)
    gate = no_regression({name: s.comparison for name, s in sets.items()}, gate_metrics, tolerance_points)
    return Evaluation(sets, _general(sides, top_k), gate)


def _labelled(
    run: Callable[[str, dict, int], dict],
    labelled: LabelledQueries,
    chunk_document: dict[str, str],
    corpus_ids: list[str],
    top_k: int,
    teacher_score: TeacherScore | None,
) -> QuerySetResult:
    # Several chunks of one document collapse into one hit: rank chunks 10x deeper than the
    # documents kept, so that top_k distinct documents are still there.
    depth = min(len(corpus_ids), 10 * top_k)
    base_chunks = run("base", labelled.queries, depth)
    runs = (
        document_run(base_chunks, chunk_document, top_k),
        document_run(run("fine_tuned", labelled.queries, depth), chunk_document, top_k),
    )
    real = compare_runs(labelled.qrels, *runs)
    teacher = None
    if teacher_score is not None:
        # a cross-encoder reranks the base's top_k chunks (as deep a pool as a reranker gets)
        pool = {q: dict(list(hits.items())[:top_k]) for q, hits in base_chunks.items()}
        teacher_chunks = teacher_score(labelled.queries, pool, depth)
        teacher = ir_metrics(labelled.qrels, document_run(teacher_chunks, chunk_document, top_k))
    return QuerySetResult(
        len(labelled.queries),
        real,
        per_query_frame("labelled", labelled.queries, labelled.qrels, *runs, real["per_query"]),
        query_set_version(labelled.queries, labelled.qrels, corpus_ids),
        teacher,
    )


def _general(sides: dict[str, Side], top_k: int) -> dict:
    """Both models' nDCG@10 on a small general-domain set that ships with Python, and the
    points fine-tuning lost there (forgetting)."""
    general_set = general_retrieval_set()
    scores = {
        side: ir_metrics(
            general_set.qrels,
            retrieve(model, general_set.corpus, general_set.queries, top_k=top_k, embed=embed),
        )["NDCG@10"]
        for side, (model, _, embed) in sides.items()
    }
    forgetting = (scores["base"] - scores["fine_tuned"]) * 100
    return {
        **scores,
        "queries": len(general_set.queries),
        "documents": len(general_set.corpus),
        "version": general_set.version,
        "forgetting_points": round(forgetting, 2),
    }
