"""The validation set that picks checkpoints, merge weights and the recipe: held-out generated
questions of held-out documents, searched over their positives plus sampled distractor chunks; or,
when the user asks for it, a split of labelled queries set aside for choosing."""

from __future__ import annotations

import random
from collections.abc import Mapping

import polars as pl

from embed_assets.training.trainer import ValidationSet


def validation_set(
    qa_splits: pl.DataFrame, chunks: pl.DataFrame, distractors: int, seed: int
) -> ValidationSet | None:
    """The ``val`` split's questions over a corpus of their positive chunks and ``distractors``
    other chunks sampled with ``seed``; None when the split has no validation questions.

    A sampled corpus keeps validation cheap enough to run inside training (a few hundred
    chunks instead of the whole corpus), at the price of easier negatives than the test split's.
    """
    val = qa_splits.filter(pl.col("split") == "val")
    if val.height == 0:
        return None
    positives = {c for ids in val["positive_chunk_ids"] for c in ids}
    others = chunks.filter(~pl.col("chunk_id").is_in(list(positives)))
    sample = others.sample(min(distractors, others.height), seed=seed)
    corpus_rows = chunks.filter(pl.col("chunk_id").is_in(list(positives)))
    corpus = dict(zip(corpus_rows["chunk_id"], corpus_rows["text"], strict=True))
    corpus.update(zip(sample["chunk_id"], sample["text"], strict=True))
    return ValidationSet(
        queries=dict(zip(val["qa_id"], val["question"], strict=True)),
        corpus=corpus,
        relevant={q: set(p) for q, p in zip(val["qa_id"], val["positive_chunk_ids"], strict=True)},
    )


def labelled_validation_set(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    chunks: pl.DataFrame,
    distractors: int,
    seed: int,
    max_chunks: int = 2000,
) -> ValidationSet | None:
    """Labelled queries (a split the user set aside for choosing, never the evaluation's) as a
    validation set: searched over the chunks of their judged documents plus ``distractors``
    other chunks sampled with ``seed``; None when no query has a relevant chunk.

    Args:
        queries: ``{query_id: text}``.
        qrels: ``{query_id: {doc_path: grade}}``; a document graded above 0 is relevant, one
            graded 0 is kept in the corpus as a judged non-relevant document.
        chunks: the pipeline's chunks (``chunk_id``, ``doc_path``, ``text``).
        distractors: unjudged chunks added to the corpus.
        seed: seeds the order in which queries are taken and the distractor sample.
        max_chunks: the judged documents' chunks stop growing past this: queries are taken in
            seeded order while their documents fit. A corpus of labelled topics often judges most
            documents (NFCorpus' dev queries judge 3,119 of 3,633), and validation runs inside
            training, so it has to stay a few thousand chunks on a CPU.

    Relevance is per chunk: every chunk of a relevant document counts, as the evaluator scores
    chunks (the evaluation scores a document by its best chunk instead).
    """
    by_doc: dict[str, list[str]] = {}
    for chunk_id, doc in zip(chunks["chunk_id"], chunks["doc_path"], strict=True):
        by_doc.setdefault(doc, []).append(chunk_id)
    order = sorted(qrels)
    random.Random(seed).shuffle(order)
    taken: dict[str, set[str]] = {}
    judged: set[str] = set()
    for qid in (q for q in order if q in queries):
        relevant = {c for doc, grade in qrels[qid].items() if grade > 0 for c in by_doc.get(doc, ())}
        seen = {c for doc in qrels[qid] for c in by_doc.get(doc, ())}
        if not relevant:
            continue
        if taken and len(judged | seen) > max_chunks:
            continue  # a smaller topic later in the order may still fit
        taken[qid] = relevant
        judged |= seen
    if not taken:
        return None
    texts = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    others = chunks.filter(~pl.col("chunk_id").is_in(list(judged)))
    sample = others.sample(min(distractors, others.height), seed=seed)
    corpus = {c: texts[c] for c in sorted(judged)}
    corpus.update(zip(sample["chunk_id"], sample["text"], strict=True))
    return ValidationSet(
        queries={q: queries[q] for q in sorted(taken)},
        corpus=corpus,
        relevant={q: taken[q] for q in sorted(taken)},
    )


def validation_to_json(val: ValidationSet | None) -> dict | None:
    """``val`` as plain JSON (relevant sets as sorted lists), to travel in an asset's value:
    the set the recipe was chosen on is the set the final model's checkpoint is chosen on."""
    if val is None:
        return None
    return {
        "queries": val.queries,
        "corpus": val.corpus,
        "relevant": {q: sorted(ids) for q, ids in val.relevant.items()},
    }


def validation_from_json(value: dict | None) -> ValidationSet | None:
    """The :class:`ValidationSet` :func:`validation_to_json` wrote."""
    if value is None:
        return None
    return ValidationSet(
        queries=value["queries"],
        corpus=value["corpus"],
        relevant={q: set(ids) for q, ids in value["relevant"].items()},
    )
