"""Unrolling mined queries into contrastive training rows."""

from __future__ import annotations

import polars as pl
import pytest

from embed_assets.training.examples import unroll_examples

TEXT = {
    "p1": "positive one",
    "p2": "positive two",
    "p3": "positive three",
    "n1": "negative one",
    "n2": "negative two",
    "n3": "negative three",
}


def _mined(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "qa_id": pl.String,
            "question": pl.String,
            "positive_chunk_ids": pl.List(pl.String),
            "negative_chunk_ids": pl.List(pl.String),
        },
    )


def test_two_positive_query_gives_two_rows_with_same_anchor_and_negatives():
    mined = _mined(
        [
            {
                "qa_id": "q1",
                "question": "multi hop?",
                "positive_chunk_ids": ["p1", "p2"],
                "negative_chunk_ids": ["n1", "n2", "n3"],
            }
        ]
    )
    out = unroll_examples(mined, TEXT, negatives_per_example=2)
    assert out.columns == ["qa_id", "anchor", "positive", "positive_id", "negative_1", "negative_2"]
    assert out.height == 2
    assert out["anchor"].to_list() == ["multi hop?", "multi hop?"]
    assert out["qa_id"].to_list() == ["q1", "q1"]
    assert out["positive_id"].to_list() == ["p1", "p2"]
    assert out["positive"].to_list() == ["positive one", "positive two"]
    # Same hard negatives on both rows, in mined order, truncated to 2.
    assert out["negative_1"].to_list() == ["negative one"] * 2
    assert out["negative_2"].to_list() == ["negative two"] * 2


def test_rows_short_of_negatives_are_dropped():
    mined = _mined(
        [
            {
                "qa_id": "full",
                "question": "a",
                "positive_chunk_ids": ["p1"],
                "negative_chunk_ids": ["n1", "n2"],
            },
            {"qa_id": "short", "question": "b", "positive_chunk_ids": ["p2"], "negative_chunk_ids": ["n1"]},
            {"qa_id": "none", "question": "c", "positive_chunk_ids": ["p3"], "negative_chunk_ids": []},
            {"qa_id": "null", "question": "d", "positive_chunk_ids": ["p3"], "negative_chunk_ids": None},
        ]
    )
    out = unroll_examples(mined, TEXT, negatives_per_example=2)
    assert out["qa_id"].to_list() == ["full"]
    one = unroll_examples(mined, TEXT, negatives_per_example=1)
    assert one["qa_id"].to_list() == ["full", "short"]


def test_zero_negatives_gives_anchor_positive_only():
    mined = _mined(
        [
            {"qa_id": "q1", "question": "a", "positive_chunk_ids": ["p1"], "negative_chunk_ids": ["n1"]},
            {"qa_id": "q2", "question": "b", "positive_chunk_ids": ["p2", "p3"], "negative_chunk_ids": []},
        ]
    )
    out = unroll_examples(mined, TEXT, negatives_per_example=0)
    assert out.columns == ["qa_id", "anchor", "positive", "positive_id"]
    assert out.height == 3
    assert out["positive_id"].to_list() == ["p1", "p2", "p3"]


def test_positive_without_text_is_skipped():
    mined = _mined(
        [{"qa_id": "q1", "question": "a", "positive_chunk_ids": ["p1", "gone"], "negative_chunk_ids": ["n1"]}]
    )
    out = unroll_examples(mined, TEXT, negatives_per_example=1)
    assert out["positive_id"].to_list() == ["p1"]


def test_empty_input_keeps_schema():
    out = unroll_examples(_mined([]), TEXT, negatives_per_example=3)
    assert out.height == 0
    assert out.columns[-3:] == ["negative_1", "negative_2", "negative_3"]


def test_negative_count_below_zero_raises():
    with pytest.raises(ValueError, match="negatives_per_example"):
        unroll_examples(_mined([]), TEXT, negatives_per_example=-1)


def test_title_questions_train_on_untitled_text_for_positive_and_negatives():
    titled = {k: f"Title {k}\n\n{v}" for k, v in TEXT.items()}
    mined = _mined(
        [
            {
                "qa_id": "t",
                "question": "Title p1",
                "positive_chunk_ids": ["p1"],
                "negative_chunk_ids": ["n1"],
            },
            {"qa_id": "k", "question": "keyword", "positive_chunk_ids": ["p2"], "negative_chunk_ids": ["n2"]},
        ]
    )
    out = unroll_examples(mined, titled, 1, untitled_text=TEXT, untitled_qa_ids={"t"})
    by_id = {r["qa_id"]: r for r in out.iter_rows(named=True)}
    # The title question sees no title header on either side: no shortcut by header presence.
    assert (by_id["t"]["positive"], by_id["t"]["negative_1"]) == ("positive one", "negative one")
    assert (by_id["k"]["positive"], by_id["k"]["negative_1"]) == (titled["p2"], titled["n2"])


def test_untitled_ids_without_untitled_text_raises():
    with pytest.raises(ValueError, match="untitled_text"):
        unroll_examples(_mined([]), TEXT, 0, untitled_qa_ids={"q"})
