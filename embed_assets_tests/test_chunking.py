"""Token-aware chunking measured with the real all-MiniLM-L6-v2 tokenizer."""

from __future__ import annotations

import polars as pl
import pytest

from embed_assets.hashing import content_hash
from embed_assets.ingest.chunking import CHUNK_SCHEMA, ChunkingConfig, chunk_documents


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _body(row: dict) -> str:
    header = f"{row['title']}\n\n"
    return row["text"][len(header) :] if row["text"].startswith(header) else row["text"]


def _tag_copy(text: str, i: int) -> str:
    return text.replace(". ", f". (copy {i}) ").replace("\n", f" (copy {i})\n")


@pytest.mark.parametrize(("chunk_tokens", "overlap_tokens"), [(128, 24), (64, 16)])
def test_every_chunk_within_token_budget(mini_documents, base_model, chunk_tokens, overlap_tokens):
    tok = base_model.tokenizer
    cfg = ChunkingConfig(chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    chunks = chunk_documents(mini_documents, tok, cfg)

    assert dict(chunks.schema) == CHUNK_SCHEMA
    assert set(chunks["doc_id"]) == set(mini_documents["doc_id"])  # every document yields chunks
    for text in chunks["text"]:
        assert _n_tokens(tok, text) <= chunk_tokens, text
    assert (chunks["n_tokens"] <= chunk_tokens).all()
    # Smaller budget -> more chunks.
    assert chunks.height > mini_documents.height


def test_chunks_carry_title_header(mini_chunks):
    for row in mini_chunks.iter_rows(named=True):
        assert row["text"].startswith(row["title"]), row["text"][:80]


def test_consecutive_chunks_overlap(mini_chunks):
    pairs = 0
    for doc_id in mini_chunks["doc_id"].unique():
        rows = mini_chunks.filter(pl.col("doc_id") == doc_id).sort("chunk_index").to_dicts()
        assert [r["chunk_index"] for r in rows] == list(range(len(rows)))
        for prev, nxt in zip(rows, rows[1:], strict=False):
            head = _body(nxt)[:20]
            assert len(head) == 20
            assert head in _body(prev), (prev["text"][-80:], nxt["text"][:80])
            pairs += 1
    assert pairs >= 10


def test_huge_document_gets_many_chunks_none_over_budget(mini_documents, base_model):
    tok = base_model.tokenizer
    src = mini_documents.sort("n_chars", descending=True).row(0, named=True)  # the largest one
    # 50 copies, every sentence and line tagged with its copy number so that no chunk repeats an
    # earlier one (repeated chunks would be dropped as boilerplate).
    big_text = "\n\n".join(_tag_copy(src["text"], i) for i in range(50))
    assert len(big_text) >= 50 * mini_documents["n_chars"].max()
    big = pl.DataFrame([{"doc_id": "big", "doc_path": "big.md", "title": "Big Manual", "text": big_text}])
    docs = pl.concat([mini_documents.select("doc_id", "doc_path", "title", "text"), big])
    cfg = ChunkingConfig()
    chunks = chunk_documents(docs, tok, cfg)

    per_doc = chunks.group_by("doc_id").len()
    n_big = per_doc.filter(pl.col("doc_id") == "big")["len"].item()
    n_other_max = per_doc.filter(pl.col("doc_id") != "big")["len"].max()
    assert n_big >= 20 * n_other_max, (n_big, n_other_max)
    assert n_big >= _n_tokens(tok, big_text) // cfg.chunk_tokens
    for text in chunks.filter(pl.col("doc_id") == "big")["text"]:
        assert _n_tokens(tok, text) <= cfg.chunk_tokens
    # Adding a big document does not change the other documents' chunks.
    alone = chunk_documents(mini_documents, tok, cfg)
    assert chunks.filter(pl.col("doc_id") != "big").equals(alone)


def test_chunk_ids_are_content_hashes_and_rerun_identical(mini_documents, base_model, mini_chunks):
    for cid, text in zip(mini_chunks["chunk_id"], mini_chunks["text"], strict=True):
        assert cid == content_hash(text)
    assert mini_chunks["chunk_id"].n_unique() == mini_chunks.height
    again = chunk_documents(mini_documents, base_model.tokenizer)
    assert again.equals(mini_chunks)


def test_repeated_boilerplate_chunks_are_dropped(base_model):
    text = "Identical boilerplate paragraph about nothing in particular."
    docs = pl.DataFrame(
        [
            {"doc_id": "a", "doc_path": "a.md", "title": "Same", "text": text},
            {"doc_id": "b", "doc_path": "b.md", "title": "Same", "text": text},
        ]
    )
    chunks = chunk_documents(docs, base_model.tokenizer)
    assert chunks.height == 1
    assert chunks["doc_id"].to_list() == ["a"]


def test_no_title_header_when_disabled(mini_documents, base_model):
    chunks = chunk_documents(mini_documents, base_model.tokenizer, ChunkingConfig(add_title=False))
    wal = chunks.filter(pl.col("doc_path") == "runtime-config-wal-wal-level.md").sort("chunk_index")
    # The second chunk of a document starts mid-document, not with the title.
    assert not wal["text"][1].startswith(wal["title"][1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"chunk_tokens": 128, "overlap_tokens": 64}, "overlap_tokens"),
        ({"chunk_tokens": 64, "overlap_tokens": 40}, "overlap_tokens"),
        ({"chunk_tokens": 128, "overlap_tokens": -1}, "overlap_tokens"),
        ({"chunk_tokens": 8, "overlap_tokens": 0}, "chunk_tokens"),
    ],
)
def test_bad_chunking_config_raises(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ChunkingConfig(**kwargs)


def test_overlap_just_under_half_is_accepted():
    assert ChunkingConfig(chunk_tokens=128, overlap_tokens=63).overlap_tokens == 63


def test_small_budget_chunks_within_budget_after_retokenising(mini_documents, base_model):
    tok = base_model.tokenizer
    chunks = chunk_documents(mini_documents, tok, ChunkingConfig(chunk_tokens=32, overlap_tokens=8))
    over = [t for t in chunks["text"] if _n_tokens(tok, t) > 32]
    assert over == []


def test_long_title_does_not_break_budget(base_model):
    tok = base_model.tokenizer
    doc = {
        "doc_id": "t",
        "doc_path": "t.md",
        "title": " ".join(["Interminable section heading"] * 25),
        "text": " ".join(f"Sentence number {i} says something." for i in range(100)),
    }
    chunks = chunk_documents(pl.DataFrame([doc]), tok, ChunkingConfig())
    assert max(_n_tokens(tok, t) for t in chunks["text"]) <= 128
