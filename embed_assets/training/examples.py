"""Turn mined queries into training rows for a contrastive loss.

A multi-hop question with several positives becomes one row per positive
("unrolled"), each with the same hard negatives. The no-duplicates batch
sampler then keeps rows of the same question out of one batch, where they would
act as each other's false negatives.
"""

from __future__ import annotations

import polars as pl


def unroll_examples(
    mined: pl.DataFrame,
    chunk_text: dict[str, str],
    negatives_per_example: int = 1,
    *,
    untitled_text: dict[str, str] | None = None,
    untitled_qa_ids: frozenset[str] | set[str] = frozenset(),
) -> pl.DataFrame:
    """Build ``anchor, positive, negative_1..negative_n`` rows.

    Args:
        mined: frame with ``qa_id, question, positive_chunk_ids, negative_chunk_ids``.
        chunk_text: ``chunk_id -> text``.
        negatives_per_example: hard negatives per row (0 = in-batch negatives only).
            Rows with fewer mined negatives than this are dropped, because the
            sentence-transformers collator needs a fixed number of columns.
        untitled_text: ``chunk_id -> text`` without the chunk's title header, used for
            the rows of ``untitled_qa_ids`` (positive and negatives alike).
        untitled_qa_ids: questions written from the title (e.g. the structure generator's):
            with the title header left in, the positive would begin with the question
            itself and the pair would teach nothing; stripping only the positive's header
            would let the model tell positives from negatives by the header's absence.

    Returns:
        Columns ``qa_id, anchor, positive, positive_id`` and ``negative_1..n``.
    """
    if negatives_per_example < 0:
        raise ValueError(f"negatives_per_example must be >= 0, got {negatives_per_example}")
    if untitled_qa_ids and untitled_text is None:
        raise ValueError("untitled_qa_ids needs untitled_text")
    rows = []
    for r in mined.iter_rows(named=True):
        negs = (r.get("negative_chunk_ids") or [])[:negatives_per_example]
        if len(negs) < negatives_per_example:
            continue
        texts = untitled_text if r["qa_id"] in untitled_qa_ids else chunk_text
        for pid in r["positive_chunk_ids"]:
            if pid not in texts:
                continue
            row = {
                "qa_id": r["qa_id"],
                "anchor": r["question"],
                "positive": texts[pid],
                "positive_id": pid,
            }
            row.update({f"negative_{i + 1}": texts[n] for i, n in enumerate(negs)})
            rows.append(row)
    schema = {"qa_id": pl.String, "anchor": pl.String, "positive": pl.String, "positive_id": pl.String}
    schema.update({f"negative_{i + 1}": pl.String for i in range(negatives_per_example)})
    return pl.DataFrame(rows, schema=schema)
