"""BM25 over the chunk table: the text stored beside the vectors, its LanceDB full-text index,
and the ranks the round-trip filter's second opinion reads. Real model, real LanceDB."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from embed_assets.index.chunk_index import ChunkIndex, write_chunk_index
from embed_assets.index.lexical import lexical_ranks


def _holders(chunks: pl.DataFrame, needle: str) -> list[str]:
    ids = [c for c, t in zip(chunks["chunk_id"], chunks["text"], strict=True) if needle in t]
    assert ids, f"{needle!r} not in the mini corpus"
    return ids


def test_chunk_index_stores_text_with_a_full_text_index(mini_index, mini_chunks):
    tbl = mini_index.open().to_arrow()
    assert "text" in tbl.column_names
    text_of = dict(zip(tbl["chunk_id"].to_pylist(), tbl["text"].to_pylist(), strict=True))
    assert text_of == dict(zip(mini_chunks["chunk_id"], mini_chunks["text"], strict=True))
    assert mini_index.has_text_index() is True


def test_rare_identifier_ranks_its_only_chunk_first(mini_index, mini_chunks):
    # Each SQLSTATE code appears in exactly one chunk: exact term match is what BM25 is for.
    deadlock, unique = _holders(mini_chunks, "40P01"), _holders(mini_chunks, "23505")
    assert len(deadlock) == 1 and len(unique) == 1
    ranks = lexical_ranks(["40P01", "SQLSTATE 23505"], [deadlock, unique], mini_index, k=5)
    assert ranks == [1, 1]


def test_no_match_or_wrong_positive_gives_none(mini_index, mini_chunks):
    deadlock = _holders(mini_chunks, "40P01")
    other = mini_chunks.filter(~pl.col("chunk_id").is_in(deadlock))["chunk_id"][0]
    ranks = lexical_ranks(["zebra banana quantum", "40P01"], [deadlock, [other]], mini_index, k=3)
    assert ranks == [None, None]


def test_query_syntax_is_matched_as_plain_words(mini_index, mini_chunks):
    # Quotes, colons, parentheses and AND/OR would be query syntax to a parser; MatchQuery takes words.
    holders = _holders(mini_chunks, "hash_mem_multiplier")
    [rank] = lexical_ranks(['"hash_mem_multiplier": (work_mem AND OR'], [holders], mini_index, k=10)
    assert rank is not None and rank <= 3


def test_mismatched_lengths_raise(mini_index):
    with pytest.raises(ValueError, match="2 questions but 1 positive"):
        lexical_ranks(["a", "b"], [["x"]], mini_index, k=3)


def test_vector_only_table_has_no_text_index_and_says_so(tmp_path):
    ids = ["a", "b"]
    vectors = np.eye(2, 4, dtype=np.float32)
    index = write_chunk_index(
        [(pl.DataFrame({"chunk_id": ids, "doc_id": ids, "chunk_index": [0, 0]}), vectors)], 4, tmp_path
    )
    assert index.has_text_index() is False
    assert "text" not in index.open().schema.names
    with pytest.raises(ValueError, match=r"no full-text index on 'text'.*rebuild it with build_chunk_index"):
        lexical_ranks(["a"], [["a"]], ChunkIndex(index.uri, index.table), k=1)
