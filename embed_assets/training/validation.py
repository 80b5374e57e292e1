"""The validation set that picks checkpoints, merge weights and the recipe: held-out generated
questions of held-out documents, searched over their positives plus sampled distractor chunks."""

from __future__ import annotations

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
