"""The teacher scored zero-shot on the same query sets as base and fine-tuned, so a user sees
whether the student caught up with the (larger, slower) model that taught it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from embed_assets.evaluation.metrics import Run
from embed_assets.evaluation.retrieval import retrieve
from embed_assets.teacher.scorer import Teacher, TeacherScoreCache


def teacher_run(
    teacher: Teacher,
    cache: TeacherScoreCache,
    corpus: dict[str, str],
    queries: dict[str, str],
    top_k: int,
    *,
    candidates: Run,
    corpus_vectors: Callable[[], np.ndarray] | None = None,
    embed: Callable[[list[str]], np.ndarray] | None = None,
) -> Run:
    """The teacher's ranking of ``corpus`` for ``queries``.

    A bi-encoder teacher searches the whole corpus (``corpus_vectors`` gives its vectors of it,
    e.g. from an embedding cache; ``embed`` its vectors of the queries). A cross-encoder cannot
    search: it reranks ``candidates`` (the base model's top ``top_k``), as it would in production,
    with its scores read from and added to ``cache``.
    """
    if teacher.kind == "bi-encoder":
        vectors = corpus_vectors() if corpus_vectors is not None else None
        return retrieve(teacher.model, corpus, queries, top_k, corpus_vectors=vectors, embed=embed)
    pairs = [(q, d) for q, hits in candidates.items() if q in queries for d in hits]
    scores = cache.scores(teacher, [queries[q] for q, _ in pairs], [corpus[d] for _, d in pairs])
    run: Run = {q: {} for q in queries}
    for (q, d), s in zip(pairs, scores, strict=True):
        run[q][d] = float(s)
    return {q: dict(sorted(h.items(), key=lambda kv: -kv[1])[:top_k]) for q, h in run.items()}
