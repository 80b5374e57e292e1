"""The model-free title / key-phrase question generator (``structure-v1``)."""

from __future__ import annotations

import polars as pl
import pytest

from embed_assets.generation.base import QA_SCHEMA, QuestionGenerator
from embed_assets.generation.structure import StructureQuestionGenerator, clean_title, strip_title
from embed_assets.ingest.chunking import CHUNK_SCHEMA

DOCS = [
    (
        "d1",
        "Statin Use and Breast Cancer Survival: A Nationwide Cohort Study from Finland.",
        "Recent studies have suggested that statins could delay breast cancer recurrence. "
        "We evaluated statin use among breast cancer patients. Statin use was associated with "
        "lowered risk of breast cancer death.",
    ),
    (
        "d2",
        "Green tea consumption and mortality among Japanese elderly people [Article in Japanese]",
        "Green tea is widely consumed in Japan. We followed elderly people and their green tea "
        "consumption; green tea consumption was associated with lower mortality.",
    ),
    (
        "d3",
        "Introduction",
        "Cadmium in rice and cadmium in shellfish are the main sources. Cadmium intake was measured. "
        "Rice cadmium levels varied.",
    ),
]


def _chunks(docs=DOCS) -> pl.DataFrame:
    rows = [
        {
            "chunk_id": f"c-{doc_id}",
            "doc_id": doc_id,
            "doc_path": f"{doc_id}.md",
            "chunk_index": 0,
            "title": title,
            "text": f"{title}\n\n{body}",
            "n_tokens": 0,
        }
        for doc_id, title, body in docs
    ]
    return pl.DataFrame(rows, schema=CHUNK_SCHEMA)


def test_clean_and_strip_title():
    assert clean_title("Green tea and mortality [Article in Japanese].") == "Green tea and mortality"
    assert clean_title(
        "Effects of protein and fat ingestion on blood glucose in noninsulin-dependent d..."
    ) == ("Effects of protein and fat ingestion on blood glucose in noninsulin-dependent d")
    assert strip_title("My Title\n\nBody text.", "My Title") == "Body text."
    assert strip_title("Body only.", "My Title") == "Body only."


def test_title_and_keyphrase_questions():
    gen = StructureQuestionGenerator()
    assert isinstance(gen, QuestionGenerator)
    result = gen.generate(_chunks(), questions_per_chunk=3, multi_hop_questions=0, seed=1)
    qa = result.qa
    assert dict(qa.schema) == QA_SCHEMA
    by_doc = {
        d: qa.filter(pl.col("doc_ids").list.first() == d)["question"].to_list() for d in ("d1", "d2", "d3")
    }
    assert "Statin Use and Breast Cancer Survival: A Nationwide Cohort Study from Finland" in by_doc["d1"]
    assert "statin" in by_doc["d1"]  # the title word the body repeats most, stopword "use" split off
    assert "Green tea consumption and mortality among Japanese elderly people" in by_doc["d2"]
    # "Introduction" is no title question; the body's repeated specific word is the fallback key phrase.
    assert by_doc["d3"] == ["cadmium"]
    assert result.stats["llm_calls"] == 0
    assert (qa["hops"] == 1).all() and (qa["answer"] == "").all()
    assert set(qa["query_type"]) == {"factual", "keyword"}


def test_deterministic_and_capped():
    gen = StructureQuestionGenerator(kinds=("title", "title_main", "keyphrase"))
    a = gen.generate(_chunks(), questions_per_chunk=2, seed=1).qa
    b = gen.generate(_chunks(), questions_per_chunk=2, seed=99).qa
    assert a.equals(b)
    assert a.group_by("doc_ids").len()["len"].max() <= 2


def test_title_question_only_for_first_chunk():
    chunks = pl.concat(
        [
            _chunks(DOCS[:1]),
            _chunks(DOCS[:1]).with_columns(
                pl.lit("c-d1-b").alias("chunk_id"), pl.lit(1, pl.Int32).alias("chunk_index")
            ),
        ]
    )
    qa = StructureQuestionGenerator(kinds=("title",)).generate(chunks, questions_per_chunk=3).qa
    assert qa["positive_chunk_ids"].to_list() == [["c-d1"]]


def test_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kinds"):
        StructureQuestionGenerator(kinds=("summary",))


CADMIUM_DOCS = [
    (
        f"d{i}",
        f"Cadmium exposure study number {i}",
        f"Cadmium was measured in cohort {i}. Cadmium levels rose with rice intake in region {i}.",
    )
    for i in range(4)
]


def test_a_key_phrase_picked_for_several_chunks_becomes_one_multi_positive_question():
    chunks = _chunks(CADMIUM_DOCS)
    single = StructureQuestionGenerator(kinds=("keyphrase",), max_phrase_df=1.0)
    single = single.generate(chunks, questions_per_chunk=1).qa
    assert single.filter(pl.col("question") == "cadmium").height == 4  # one near-duplicate per chunk

    grouped = StructureQuestionGenerator(kinds=("keyphrase",), max_phrase_df=1.0, max_phrase_positives=3)
    result = grouped.generate(chunks, questions_per_chunk=1)
    cadmium = result.qa.filter(pl.col("question") == "cadmium")
    assert cadmium.height == 1
    assert cadmium["positive_chunk_ids"].to_list() == [["c-d0", "c-d1", "c-d2"]]  # corpus order, capped
    assert cadmium["doc_ids"].to_list() == [["d0", "d1", "d2"]]
    assert result.stats["keyphrase_positives_merged"] == 2
    assert result.stats["keyphrase_positives_over_cap"] == 1
    with pytest.raises(ValueError, match="max_phrase_positives"):
        StructureQuestionGenerator(max_phrase_positives=0)
