"""Teacher labels for mined triples: the stage between hard-negative mining and training rows.

Every (question, positive chunk, mined negative chunk) triple gets the teacher's score of both
pairs (GPL, Wang et al. 2022). Training then drops a "negative" the teacher scores at or above its
positive (a likely unlabelled positive) and fits the student's score margins to the teacher's
(MarginMSE). Before any of that, the teacher must show that it can tell a question's chunk from a
random one (:func:`separation_auc`) and that it reads whole chunks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from embed_assets.teacher.scorer import SETTING, Teacher, TeacherError, TeacherScoreCache, auc

LABELS_SCHEMA = {
    "qa_id": pl.String,
    "positive_chunk_id": pl.String,
    "teacher_positive": pl.Float32,
    "negative_chunk_ids": pl.List(pl.String),
    "teacher_negatives": pl.List(pl.Float32),
}
MIN_AUC = 0.6  # 0.5 is chance; a teacher that barely beats it would only add noise
MAX_TRUNCATED_SHARE = 0.05


@dataclass
class TeacherLabels:
    """What :func:`label_triples` returns.

    ``frame`` has :data:`LABELS_SCHEMA`, one row per (question, positive); ``margins`` holds
    every triple's teacher margin (positive minus negative score), for the distribution plot;
    ``truncated_share`` the share of a seeded sample of positive chunks longer than it reads.
    """

    frame: pl.DataFrame
    margins: np.ndarray
    separation_auc: float
    counts: dict[str, int] = field(default_factory=dict)
    truncated_share: float = 0.0


def _truncation_check(teacher: Teacher, texts: list[str], seed: int, sample: int = 300) -> float:
    """Share of ``texts`` (a seeded sample) longer than the teacher reads, with room for a question
    beside them in a cross-encoder. Raises TeacherError above :data:`MAX_TRUNCATED_SHARE`."""
    picked = random.Random(seed).sample(texts, min(sample, len(texts)))
    room = teacher.max_length - (32 if teacher.kind == "cross-encoder" else 0)
    lengths = teacher.token_lengths(picked) if picked else []
    share = sum(n > room for n in lengths) / max(len(lengths), 1)
    if share > MAX_TRUNCATED_SHARE:
        raise TeacherError(
            f"{SETTING}: teacher {teacher.name!r} reads at most {teacher.max_length} tokens, and "
            f"{share:.0%} of the chunks sampled are longer in its tokenizer (longest {max(lengths)}): it "
            "would judge cut chunks. Use a teacher with a longer limit (or resources.teacher.config.max_length "
            "when the model allows more), or shorter chunks (ops.document_chunks.config.chunk_tokens)"
        )
    return share


def separation_auc(
    qa: pl.DataFrame,
    chunk_text: dict[str, str],
    chunk_doc: dict[str, str],
    score,
    *,
    queries: int = 200,
    seed: int = 42,
) -> float:
    """How well ``score`` tells each question's positive chunk from a random chunk of another
    document (AUC over a seeded sample of ``queries`` questions of ``qa``)."""
    rng = random.Random(seed)
    rows = [r for r in qa.iter_rows(named=True) if r["positive_chunk_ids"]]
    rows = rng.sample(rows, min(queries, len(rows)))
    ids = sorted(chunk_text)
    qs, pos, neg = [], [], []
    for r in rows:
        positive = r["positive_chunk_ids"][0]
        if positive not in chunk_text:
            continue
        other = next(
            (c for c in (rng.choice(ids) for _ in range(20)) if chunk_doc[c] != chunk_doc[positive]), None
        )
        if other is None:
            continue
        qs.append(r["question"])
        pos.append(chunk_text[positive])
        neg.append(chunk_text[other])
    scores = score(qs + qs, pos + neg)
    return auc(scores[: len(qs)], scores[len(qs) :])


def label_triples(
    mined: pl.DataFrame,
    qa_splits: pl.DataFrame,
    chunks: pl.DataFrame,
    teacher: Teacher,
    cache: TeacherScoreCache,
    *,
    min_auc: float = MIN_AUC,
    seed: int = 42,
) -> TeacherLabels:
    """Score every (question, positive) and (question, mined negative) pair of ``mined`` with ``teacher``.

    Args:
        mined: the miner's frame (``qa_id, question, positive_chunk_ids, negative_chunk_ids``).
        qa_splits: the split questions; the validation split's check the teacher's separation.
        chunks: ``chunk_id, doc_id, text``: the teacher reads whole chunks, title header included
            (the training row may leave it out; the label is about the chunk's relevance).
        teacher: the loaded teacher.
        cache: scores by content hash; only pairs it has not seen are scored.
        min_auc: refuse a teacher whose separation AUC on validation questions is below this.
        seed: seeds the separation sample.

    Raises:
        TeacherError: the teacher reads too few tokens, scores NaN, or separates at most ``min_auc``.
    """
    text = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    doc = dict(zip(chunks["chunk_id"], chunks["doc_id"], strict=True))
    counts: dict[str, int] = {}
    positives = sorted({c for ids in mined["positive_chunk_ids"] for c in ids if c in text})
    truncated_share = _truncation_check(teacher, [text[c] for c in positives], seed)

    def score(qs, ps):
        return cache.scores(teacher, qs, ps)

    check = qa_splits.filter(pl.col("split") == "val")
    check = check if check.height else qa_splits
    separation = separation_auc(check, text, doc, score, seed=seed)
    if not separation > min_auc:
        raise TeacherError(
            f"{SETTING}: teacher {teacher.name!r} does not separate positives from random chunks on "
            f"{'validation' if check is not qa_splits else 'generated'} questions: AUC {separation:.3f} "
            f"(needs > {min_auc}; 0.5 is chance). Use another teacher, or 'none'"
        )
    qs, ps, keys = [], [], []
    for r in mined.iter_rows(named=True):
        negatives = [n for n in r["negative_chunk_ids"] or [] if n in text]
        for p in r["positive_chunk_ids"]:
            if p not in text:
                continue
            keys.append((r["qa_id"], p, negatives))
            qs += [r["question"]] * (1 + len(negatives))
            ps += [text[p]] + [text[n] for n in negatives]
    scores = score(qs, ps)
    rows, margins, at = [], [], 0
    for qa_id, p, negatives in keys:
        pos, neg = float(scores[at]), scores[at + 1 : at + 1 + len(negatives)]
        at += 1 + len(negatives)
        margins.extend(pos - neg)
        rows.append(
            {
                "qa_id": qa_id,
                "positive_chunk_id": p,
                "teacher_positive": pos,
                "negative_chunk_ids": negatives,
                "teacher_negatives": [float(s) for s in neg],
            }
        )
    margins_arr = np.asarray(margins, dtype=np.float32)
    counts.update(
        triples=int(margins_arr.size),
        false_negatives=int((margins_arr <= 0).sum()),
        pairs_scored=cache.computed,
        pairs_from_cache=cache.hits,
    )
    return TeacherLabels(
        pl.DataFrame(rows, schema=LABELS_SCHEMA), margins_arr, separation, counts, truncated_share
    )


def empty_labels() -> pl.DataFrame:
    """The labels of a run without a teacher: no rows, so training rows carry no margins."""
    return pl.DataFrame(schema=LABELS_SCHEMA)
