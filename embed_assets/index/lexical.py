"""BM25 search over the chunk table's text, through LanceDB's own full-text index.

A base embedding model misses what it never saw in pre-training: a team's vocabulary,
rare identifiers, error codes, product names. BM25 ranks those by exact term match, so
it is the natural second opinion for the round-trip filter: a question the base model
cannot place, but whose positive BM25 ranks near the top, is specific rather than
vague, and it is exactly what fine-tuning should teach. (On NFCorpus dev queries, a hybrid
of all-MiniLM-L6-v2 and this BM25 scores 0.334 nDCG@10 against the model's 0.302:
benchmarks/README.md, "Findings".)

LanceDB's native inverted index (the table's store is the product's store; no second
search engine to run) tokenises with lower-casing, ASCII folding, English stemming and
stop-word removal. Queries go through :class:`lancedb.query.MatchQuery`, so a question
with quotes, colons or ``AND`` is matched as plain words, never parsed as syntax.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from lancedb.query import MatchQuery

from embed_assets.index.chunk_index import ChunkIndex

TEXT_COLUMN = "text"  # as written by write_chunk_index


def lexical_ranks(
    questions: list[str], positives: list[list[str]], index: ChunkIndex, k: int, workers: int = 4
) -> list[int | None]:
    """1-based BM25 rank of each question's best-ranked positive among the top ``k``, else None.

    Args:
        questions: query texts.
        positives: the positive chunk ids of each question.
        index: a chunk table written with its text (:func:`~embed_assets.index.chunk_index.build_chunk_index`).
        k: how deep to look.
        workers: queries in flight at once.
    """
    if len(questions) != len(positives):
        raise ValueError(f"{len(questions)} questions but {len(positives)} positive lists")
    if not index.has_text_index():
        raise ValueError(
            f"LanceDB table {index.table!r} at {index.uri} has no full-text index on {TEXT_COLUMN!r}: "
            "rebuild it with build_chunk_index (tables written before chunk text was stored lack it)"
        )
    tbl = index.open()

    def rank(question: str, pos: list[str]) -> int | None:
        hits = (
            tbl.search(MatchQuery(question, TEXT_COLUMN), query_type="fts")
            .limit(k)
            # Naming _score keeps lance from logging a deprecation warning on every query.
            .select(["chunk_id", "_score"])
            .to_arrow()["chunk_id"]
            .to_pylist()
        )
        wanted = set(pos)
        return next((r + 1 for r, cid in enumerate(hits) if cid in wanted), None)

    # LanceDB answers one full-text query per call and each call waits on its event loop; a few
    # queries in flight overlap those waits (1.5x on 2 cores for 2,000 questions, same ranks).
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(rank, questions, positives))
