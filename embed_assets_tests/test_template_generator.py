"""The model-free template question generator on real mini-corpus chunks."""

from __future__ import annotations

import re

import polars as pl
import pytest

from embed_assets.generation.base import QA_SCHEMA, QUERY_TYPES, make_qa_id
from embed_assets.generation.template import TemplateQuestionGenerator

_BACKTICKED = re.compile(r"`([^`\n]+)`")


def _generate(chunks: pl.DataFrame, seed: int = 7, multi_hop: int = 20):
    return TemplateQuestionGenerator().generate(
        chunks, questions_per_chunk=2, multi_hop_questions=multi_hop, seed=seed
    )


@pytest.fixture(scope="module")
def generated(mini_chunks):
    return _generate(mini_chunks)


def test_output_matches_schema(generated):
    qa = generated.qa
    assert qa.height > 0
    assert dict(qa.schema) == QA_SCHEMA
    assert qa["qa_id"].n_unique() == qa.height
    assert set(qa["query_type"]) <= set(QUERY_TYPES)
    assert qa["question"].str.strip_chars().str.len_chars().min() > 0
    assert (qa["generator"] == TemplateQuestionGenerator.name).all()
    assert qa["complexity"].is_between(1, 5).all()
    for row in qa.iter_rows(named=True):
        assert row["qa_id"] == make_qa_id(row["question"], row["positive_chunk_ids"])
        assert row["hops"] == len(row["positive_chunk_ids"])
        assert len(row["hop_contexts"]) == len(row["positive_chunk_ids"])
    stats = generated.stats
    assert stats["generated_single"] == int((qa["hops"] == 1).sum())
    assert stats["generated_multi_hop"] == int((qa["hops"] > 1).sum())


def test_deterministic_for_a_seed(mini_chunks, generated):
    again = _generate(mini_chunks, seed=7)
    assert again.qa.equals(generated.qa)
    assert again.stats == generated.stats
    other = _generate(mini_chunks, seed=8)
    assert not other.qa.equals(generated.qa)


def test_questions_use_backticked_identifiers_of_their_chunk(mini_chunks, generated):
    text_of = dict(zip(mini_chunks["chunk_id"], mini_chunks["text"], strict=True))
    hits = []
    for row in generated.qa.filter(pl.col("hops") == 1).iter_rows(named=True):
        chunk_text = text_of[row["positive_chunk_ids"][0]]
        spans = {s.strip() for s in _BACKTICKED.findall(chunk_text) if len(s.strip()) >= 3}
        hits.extend((row["question"], s) for s in spans if s in row["question"])
    assert hits, "no question names a backticked identifier of its chunk"
    # Identifiers that are rare in the corpus, e.g. hash_mem_multiplier from the work_mem page.
    assert any("_" in ident for _, ident in hits)


def test_multi_hop_records(mini_chunks, generated):
    multi = generated.qa.filter(pl.col("hops") > 1)
    assert multi.height >= 1
    doc_of = dict(zip(mini_chunks["chunk_id"], mini_chunks["doc_id"], strict=True))
    for row in multi.iter_rows(named=True):
        assert row["hops"] == 2
        assert len(row["positive_chunk_ids"]) == 2
        assert len(set(row["positive_chunk_ids"])) == 2
        assert len(row["hop_contexts"]) == 2
        assert all(c.strip() for c in row["hop_contexts"])
        assert row["doc_ids"] == list(dict.fromkeys(doc_of[c] for c in row["positive_chunk_ids"]))


def test_multi_hop_limit_respected(mini_chunks):
    assert _generate(mini_chunks, multi_hop=0).qa.filter(pl.col("hops") > 1).height == 0
    assert _generate(mini_chunks, multi_hop=2).qa.filter(pl.col("hops") > 1).height <= 2


def test_every_positive_exists_in_chunks(mini_chunks, generated):
    chunk_ids = set(mini_chunks["chunk_id"])
    doc_of = dict(zip(mini_chunks["chunk_id"], mini_chunks["doc_id"], strict=True))
    for row in generated.qa.iter_rows(named=True):
        assert row["positive_chunk_ids"]
        assert set(row["positive_chunk_ids"]) <= chunk_ids
        assert set(row["doc_ids"]) == {doc_of[c] for c in row["positive_chunk_ids"]}


def test_single_hop_questions_per_chunk_bound(mini_chunks, generated):
    single = generated.qa.filter(pl.col("hops") == 1)
    per_chunk = single.with_columns(pl.col("positive_chunk_ids").list.first().alias("c")).group_by("c").len()
    assert per_chunk["len"].max() <= 2


def test_empty_chunks_give_empty_frame(mini_chunks):
    res = _generate(mini_chunks.head(0))
    assert res.qa.height == 0
    assert dict(res.qa.schema) == QA_SCHEMA


@pytest.mark.parametrize("bad", [0, -0.1, 1.5])
def test_bad_max_identifier_df_raises(bad):
    with pytest.raises(ValueError, match="max_identifier_df"):
        TemplateQuestionGenerator(max_identifier_df=bad)
