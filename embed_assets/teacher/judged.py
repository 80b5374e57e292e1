"""Label-free choices judged by the teacher: the validation set's relevance becomes the teacher's
ranking, so the recipe, the checkpoint and the merge weight are chosen by how well a candidate
agrees with the teacher on held-out generated questions, not by how well it finds the chunk the
generator wrote each question from (which rewards learning the generator's habits)."""

from __future__ import annotations

from collections.abc import Callable

from embed_assets.evaluation.metrics import Run
from embed_assets.teacher.evaluation import teacher_run
from embed_assets.teacher.scorer import Teacher, TeacherScoreCache
from embed_assets.training.trainer import ValidationSet

# A cross-encoder cannot search: it reranks this many of the base model's hits per question, as
# the evaluation's teacher row does. The validation corpus is a few hundred chunks, so the pool
# holds the teacher's top few with room to spare.
RERANK_POOL = 50


def teacher_judged_set(
    val: ValidationSet,
    teacher: Teacher,
    cache: TeacherScoreCache,
    top_k: int,
    base_candidates: Callable[[int], Run] | None = None,
) -> ValidationSet:
    """``val`` with each question's relevant chunks replaced by the teacher's top ``top_k`` of
    ``val.corpus`` (binary pseudo-qrels, as GPL uses the teacher in place of labels).

    Args:
        val: held-out generated questions over their validation corpus.
        teacher: the loaded teacher; a bi-encoder searches the corpus (through its embedding
            cache when it has one), a cross-encoder reranks ``base_candidates``.
        cache: the teacher-score cache a cross-encoder's pair scores go through.
        top_k: chunks per question that count as relevant. nDCG@10 over the teacher's top 10
            is 1 for a candidate that ranks the teacher's first ten first, in any order.
        base_candidates: ``depth -> run`` of the base model over ``val.corpus``; required
            for a cross-encoder.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if teacher.kind == "cross-encoder" and base_candidates is None:
        raise ValueError("a cross-encoder teacher reranks candidates: pass base_candidates")
    candidates = base_candidates(max(RERANK_POOL, top_k)) if teacher.kind == "cross-encoder" else {}
    run = teacher_run(
        teacher, cache, val.corpus, val.queries, top_k, candidates=candidates, embed=teacher.embed
    )
    relevant = {q: set(hits) for q, hits in sorted(run.items()) if hits}
    return ValidationSet(queries={q: val.queries[q] for q in relevant}, corpus=val.corpus, relevant=relevant)


def agreement_with_source(judged: ValidationSet, source: ValidationSet) -> float:
    """Share of questions whose generator's source chunk is among the teacher's top-k: how far the
    teacher's judgement and the generator's pairing agree (reported beside the choice)."""
    shared = [q for q in judged.relevant if q in source.relevant]
    if not shared:
        return 0.0
    return sum(bool(judged.relevant[q] & source.relevant[q]) for q in shared) / len(shared)
