"""Turn mined queries into training rows for a contrastive loss.

A multi-hop question with several positives becomes one row per positive
("unrolled"), each with the same hard negatives. The no-duplicates batch
sampler then keeps rows of the same question out of one batch, where they would
act as each other's false negatives.
"""

from __future__ import annotations

import polars as pl


def unroll_examples(
    mined: pl.DataFrame, chunk_text: dict[str, str], negatives_per_example: int = 1
) -> pl.DataFrame:
    """Build ``anchor, positive, negative_1..negative_n`` rows.

    Args:
        mined: frame with ``qa_id, question, positive_chunk_ids, negative_chunk_ids``.
        chunk_text: ``chunk_id -> text``.
        negatives_per_example: hard negatives per row (0 = in-batch negatives only).
            Rows with fewer mined negatives than this are dropped, because the
            sentence-transformers collator needs a fixed number of columns.

    Returns:
        Columns ``qa_id, anchor, positive, positive_id`` and ``negative_1..n``.
    """
    if negatives_per_example < 0:
        raise ValueError(f"negatives_per_example must be >= 0, got {negatives_per_example}")
    rows = []
    for r in mined.iter_rows(named=True):
        negs = (r.get("negative_chunk_ids") or [])[:negatives_per_example]
        if len(negs) < negatives_per_example:
            continue
        for pid in r["positive_chunk_ids"]:
            if pid not in chunk_text:
                continue
            row = {
                "qa_id": r["qa_id"],
                "anchor": r["question"],
                "positive": chunk_text[pid],
                "positive_id": pid,
            }
            row.update({f"negative_{i + 1}": chunk_text[n] for i, n in enumerate(negs)})
            rows.append(row)
    schema = {"qa_id": pl.String, "anchor": pl.String, "positive": pl.String, "positive_id": pl.String}
    schema.update({f"negative_{i + 1}": pl.String for i in range(negatives_per_example)})
    return pl.DataFrame(rows, schema=schema)
