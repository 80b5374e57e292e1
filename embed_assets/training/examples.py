"""Turn mined queries into training rows for a contrastive loss.

A multi-hop question with several positives becomes one row per positive
("unrolled"), each with the same hard negatives. The no-duplicates batch
sampler then keeps rows of the same question out of one batch, where they would
act as each other's false negatives.

With teacher labels (:mod:`embed_assets.teacher.labels`) a row keeps only the negatives the
teacher scores below its positive, and carries the teacher's margins in a ``label`` column
for MarginMSE.
"""

from __future__ import annotations

import polars as pl

from embed_assets.generation.model_free import questions_from_title
from embed_assets.generation.structure import strip_title


def unroll_examples(
    mined: pl.DataFrame,
    chunk_text: dict[str, str],
    negatives_per_example: int = 1,
    *,
    untitled_text: dict[str, str] | None = None,
    untitled_qa_ids: frozenset[str] | set[str] = frozenset(),
    teacher: pl.DataFrame | None = None,
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
        teacher: teacher labels (:data:`~embed_assets.teacher.labels.LABELS_SCHEMA`). A mined
            negative the teacher scores at or above the row's positive is dropped as a likely
            unlabelled positive (it is not promoted to a positive: the teacher is then as likely
            to be judging an under-specified question, and a second positive of the same question
            would sit in the same batch as the first); the row's ``label`` holds the teacher's
            margins ``positive - negative_i``. A (question, positive) the teacher did not score
            gives no row.

    Returns:
        Columns ``qa_id, anchor, positive, positive_id``, ``negative_1..n`` and, with ``teacher``,
        ``label`` (margins) and ``false_negatives_dropped``.
    """
    if negatives_per_example < 0:
        raise ValueError(f"negatives_per_example must be >= 0, got {negatives_per_example}")
    if untitled_qa_ids and untitled_text is None:
        raise ValueError("untitled_qa_ids needs untitled_text")
    labels = (
        None
        if teacher is None
        else {
            (r["qa_id"], r["positive_chunk_id"]): (
                r["teacher_positive"],
                dict(zip(r["negative_chunk_ids"], r["teacher_negatives"], strict=True)),
            )
            for r in teacher.iter_rows(named=True)
        }
    )
    rows = []
    for r in mined.iter_rows(named=True):
        mined_negs = r.get("negative_chunk_ids") or []
        texts = untitled_text if r["qa_id"] in untitled_qa_ids else chunk_text
        for pid in r["positive_chunk_ids"]:
            if pid not in texts:
                continue
            row = {"qa_id": r["qa_id"], "anchor": r["question"], "positive": texts[pid], "positive_id": pid}
            if labels is None:
                negs = mined_negs[:negatives_per_example]
            else:
                if (r["qa_id"], pid) not in labels:
                    continue
                pos_score, neg_scores = labels[(r["qa_id"], pid)]
                scored = [n for n in mined_negs if n in neg_scores]
                kept = [n for n in scored if neg_scores[n] < pos_score]
                negs = kept[:negatives_per_example]
                row["label"] = [pos_score - neg_scores[n] for n in negs]
                row["false_negatives_dropped"] = len(scored) - len(kept)
            if len(negs) < negatives_per_example:
                continue
            row.update({f"negative_{i + 1}": texts[n] for i, n in enumerate(negs)})
            rows.append(row)
    schema = {"qa_id": pl.String, "anchor": pl.String, "positive": pl.String, "positive_id": pl.String}
    if labels is not None:
        schema.update(label=pl.List(pl.Float32), false_negatives_dropped=pl.Int64)
    schema.update({f"negative_{i + 1}": pl.String for i in range(negatives_per_example)})
    return pl.DataFrame(rows, schema=schema)


def training_rows(
    mined: pl.DataFrame,
    qa_splits: pl.DataFrame,
    chunks: pl.DataFrame,
    *,
    negatives_per_example: int,
    strip_title_headers: str = "auto",
    generators: set[str] | None = None,
    teacher: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The training rows of a recipe: :func:`unroll_examples` plus each question's ``split``
    (``train``, or ``val`` for a refit) and ``generator``.

    Args:
        mined: mined negatives (``qa_id, question, positive_chunk_ids, negative_chunk_ids``).
        qa_splits: the split QA set; gives each question its split and generator.
        chunks: the chunk frame (``chunk_id, text, title``).
        negatives_per_example: hard negatives per row (0 = in-batch negatives only).
        strip_title_headers: ``auto`` trains questions of generators that write from the title
            (``generation.model_free.questions_from_title``) on chunk text without its title header,
            ``always`` every question, ``never`` none.
        generators: keep only questions of these generator names; None, or a set that matches
            no question (e.g. an LLM backend the recipe does not name), keeps all.
        teacher: teacher labels, or None (see :func:`unroll_examples`).
    """
    info = qa_splits.select("qa_id", "split", "generator")
    mined = mined.drop([c for c in ("split", "generator") if c in mined.columns]).join(info, on="qa_id")
    if generators and mined["generator"].is_in(list(generators)).any():
        mined = mined.filter(pl.col("generator").is_in(list(generators)))
    ids, texts, titles = (chunks[c].to_list() for c in ("chunk_id", "text", "title"))
    text = dict(zip(ids, texts, strict=True))
    untitled = {c: strip_title(t, ti or "") for c, t, ti in zip(ids, texts, titles, strict=True)}
    if strip_title_headers == "always":
        untitled_qa = set(mined["qa_id"])
    elif strip_title_headers == "auto":
        from_title = {g for g in mined["generator"].unique().to_list() if questions_from_title(g)}
        untitled_qa = set(mined.filter(pl.col("generator").is_in(list(from_title)))["qa_id"])
    else:
        untitled_qa = set()
    rows = unroll_examples(
        mined,
        text,
        negatives_per_example,
        untitled_text=untitled,
        untitled_qa_ids=untitled_qa,
        teacher=teacher,
    )
    rows = rows.join(info, on="qa_id", how="left", maintain_order="left")
    return rows.with_columns(untitled=pl.col("qa_id").is_in(list(untitled_qa)))
