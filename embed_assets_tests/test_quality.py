"""Quality signals: near-duplicates, answer support, and round-trip scoring on a real LanceDB index."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from embed_assets.generation.base import qa_frame
from embed_assets.generation.template import TemplateQuestionGenerator
from embed_assets.models import encode
from embed_assets.quality import filters
from embed_assets.quality.filters import (
    QualityConfig,
    answer_support,
    filter_summary,
    near_duplicates,
    score_pairs,
)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


# --- near_duplicates ---------------------------------------------------------------------------


def _vectors() -> np.ndarray:
    a = _unit([1.0, 0.0, 0.0])
    a_close = _unit([1.0, 0.2, 0.0])  # cos(a, a_close) = 1/sqrt(1.04) ≈ 0.981
    a_far = _unit([1.0, 1.0, 0.0])  # cos(a, a_far) ≈ 0.707
    b = _unit([0.0, 0.0, 1.0])  # orthogonal to everything above
    return np.stack([a, a_close, a_far, b])


def test_near_duplicates_marks_high_cosine_in_order():
    vecs = _vectors()
    dup = near_duplicates(vecs, np.arange(4), threshold=0.9)
    assert dup.tolist() == [False, True, False, False]


def test_near_duplicates_respects_priority_order():
    vecs = _vectors()
    # a_close first: it is kept and the original a becomes the duplicate.
    dup = near_duplicates(vecs, np.array([1, 0, 2, 3]), threshold=0.9)
    assert dup.tolist() == [True, False, False, False]


def test_near_duplicates_compares_only_with_kept_rows():
    # x, y at cos 0.95, y, z at cos 0.95, x, z at cos ~0.81: y is a dup of x, and z is compared
    # only with the kept x, so it survives.
    t = np.deg2rad(18.19)
    x = _unit([1.0, 0.0])
    y = _unit([np.cos(t), np.sin(t)])
    z = _unit([np.cos(2 * t), np.sin(2 * t)])
    vecs = np.stack([x, y, z])
    assert float(x @ y) >= 0.9 and float(y @ z) >= 0.9 and float(x @ z) < 0.9
    assert near_duplicates(vecs, np.arange(3), threshold=0.9).tolist() == [False, True, False]


def test_near_duplicates_threshold_is_inclusive_and_blockwise():
    vecs = _vectors()
    cos = float(vecs[0] @ vecs[2])
    assert near_duplicates(vecs, np.arange(4), threshold=cos - 1e-6).tolist()[2] is True
    assert near_duplicates(vecs, np.arange(4), threshold=cos + 1e-6).tolist()[2] is False
    # block=1 gives the same answer as one big block.
    order = np.array([3, 2, 1, 0])
    assert near_duplicates(vecs, order, 0.9, block=1).tolist() == near_duplicates(vecs, order, 0.9).tolist()


def test_near_duplicates_matches_the_greedy_definition_on_many_rows():
    """Planted paraphrase clusters among random vectors, in a shuffled priority order: the result
    is the row-by-row greedy rule's (a row is a duplicate of a kept, earlier row), at any block."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 32))
    vecs = np.concatenate(
        [centres, centres[:40] + 0.15 * rng.normal(size=(40, 32)), rng.normal(size=(300, 32))]
    )
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    order = rng.permutation(len(vecs))
    expected = np.zeros(len(vecs), dtype=bool)
    kept: list[int] = []
    for i in order:
        expected[i] = bool(kept) and float((vecs[kept] @ vecs[i]).max()) >= 0.9
        if not expected[i]:
            kept.append(i)
    assert 10 < expected.sum() < 60  # the planted paraphrases, not everything or nothing
    for block in (1, 7, 512):
        assert near_duplicates(vecs, order, 0.9, block=block).tolist() == expected.tolist()
    # The approximate path (one IVF list at this size) keeps the same greedy rule.
    assert near_duplicates(vecs, order, 0.9, exact_max_rows=0).tolist() == expected.tolist()


def test_near_duplicates_takes_the_index_only_above_exact_max_rows(monkeypatch):
    vecs = _vectors()

    def no_index(*args):
        raise AssertionError("the approximate path ran")

    monkeypatch.setattr(filters, "_approximate_pairs", no_index)
    assert near_duplicates(vecs, np.arange(4), 0.9, exact_max_rows=4).tolist() == [False, True, False, False]
    with pytest.raises(AssertionError, match="approximate path ran"):
        near_duplicates(vecs, np.arange(4), 0.9, exact_max_rows=3)
    assert len(vecs) < filters.EXACT_DEDUP_MAX_ROWS  # the default run's sizes stay exact


def _exact_and_approximate_pairs(vecs: np.ndarray, order: np.ndarray, nprobe: int) -> tuple[set, set]:
    ranked = np.ascontiguousarray(vecs[order])
    exact = set(zip(*(a.tolist() for a in filters._exact_pairs(ranked, 0.9, 512)), strict=True))
    found = set(zip(*(a.tolist() for a in filters._approximate_pairs(vecs, order, 0.9, nprobe)), strict=True))
    return exact, found


def test_approximate_near_duplicates_agree_with_exact_on_minilm_questions(
    mini_chunks, base_model, monkeypatch
):
    """Real MiniLM vectors of the mini corpus' template questions and sentences, with paraphrases
    and copies planted: the index (small lists, so a row probes a part of it) finds the exact
    path's pairs, no pair below the threshold, and the same duplicates."""
    questions = (
        TemplateQuestionGenerator()
        .generate(mini_chunks, questions_per_chunk=3, multi_hop_questions=0, seed=0)
        .qa["question"]
    )
    sentences = [s.strip() for t in mini_chunks["text"] for s in t.split(". ") if len(s.strip()) > 40]
    texts = list(dict.fromkeys([*questions, *sentences]))[:320]
    planted = (
        [t.lower().rstrip("?") + "?" for t in texts[::5]]
        + [f"Please explain: {t}" for t in texts[::9]]
        + texts[::13]  # verbatim copies
    )
    vecs = encode(base_model, texts + planted)
    order = np.random.default_rng(0).permutation(len(vecs))
    monkeypatch.setattr(filters, "_ROWS_PER_LIST", 24)  # ~16 lists: a row probes half of them

    exact_pairs, found = _exact_and_approximate_pairs(vecs, order, nprobe=8)
    assert found <= exact_pairs  # each candidate's exact cosine was checked
    assert len(found) >= 0.99 * len(exact_pairs)
    exact = near_duplicates(vecs, order, 0.9)
    assert exact.sum() >= len(planted) // 2  # the plants, at least, are duplicates
    assert near_duplicates(vecs, order, 0.9, exact_max_rows=0).tolist() == exact.tolist()


def test_approximate_near_duplicates_find_every_copy_in_a_large_cluster(monkeypatch):
    """Seeded random unit vectors with planted near-copies, one centre with 150 of them (more than
    any k-nearest search would return): the index's range search finds the exact path's pairs."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(200, 64))
    copies = np.repeat(centres, [150] + [2] * 199, axis=0)
    vecs = np.concatenate(
        [centres, copies + 0.08 * rng.normal(size=copies.shape), rng.normal(size=(2500, 64))]
    )
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    order = rng.permutation(len(vecs))
    monkeypatch.setattr(filters, "_ROWS_PER_LIST", 64)

    exact_pairs, found = _exact_and_approximate_pairs(vecs, order, nprobe=4)
    assert len(exact_pairs) > 150 * 149 // 2
    assert found <= exact_pairs
    assert len(found) >= 0.99 * len(exact_pairs)
    exact = near_duplicates(vecs, order, 0.9)
    assert near_duplicates(vecs, order, 0.9, exact_max_rows=0, nprobe=4).tolist() == exact.tolist()


# --- answer_support ----------------------------------------------------------------------------


def test_answer_support_hand_values():
    ctx = ["work_mem sets the memory for a sort", "hash tables use hash_mem_multiplier"]
    # words ≥3 chars: {work_mem, memory, hash_mem_multiplier}: all in the context -> 1.0
    assert answer_support("work_mem memory hash_mem_multiplier", ctx) == pytest.approx(1.0)
    # {work_mem, controls, disk}: only work_mem present -> 1/3
    assert answer_support("work_mem controls disk", ctx) == pytest.approx(1 / 3)
    # {zebra, banana}: none -> 0
    assert answer_support("Zebra banana", ctx) == 0.0
    # case-insensitive: {WORK_MEM, SORT} -> lowered, both present
    assert answer_support("WORK_MEM SORT", ctx) == pytest.approx(1.0)
    # no word of 3+ characters: no signal
    assert answer_support("a b 1", ctx) is None
    assert answer_support("", ctx) is None


# --- score_pairs on a real index ---------------------------------------------------------------


def _verbatim_sentence(mini_chunks: pl.DataFrame) -> tuple[str, list[str]]:
    sentence = (
        "The memory limit for a hash table is computed by multiplying `work_mem` by `hash_mem_multiplier`."
    )
    holders = [c for c, t in zip(mini_chunks["chunk_id"], mini_chunks["text"], strict=True) if sentence in t]
    assert holders, "fixture sentence not found in the mini corpus chunks"
    return sentence, holders


def test_score_pairs_keeps_verbatim_and_drops_nonsense(mini_chunks, mini_index, base_model):
    sentence, holders = _verbatim_sentence(mini_chunks)
    other = mini_chunks.filter(~pl.col("chunk_id").is_in(holders))["chunk_id"][0]
    qa = qa_frame(
        [
            {
                "question": sentence,
                "answer": "multiplying work_mem by hash_mem_multiplier",
                "query_type": "factual",
                "complexity": 1,
                "hops": 1,
                "positive_chunk_ids": holders,
                "doc_ids": ["x"],
                "generator": "test",
            },
            {
                "question": "zebra banana quantum",
                "query_type": "keyword",
                "complexity": 1,
                "hops": 1,
                "positive_chunk_ids": [other],
                "doc_ids": ["x"],
                "generator": "test",
            },
        ]
    )
    cfg = QualityConfig(roundtrip_top_k=3)
    scored = score_pairs(qa, mini_chunks, base_model, mini_index, cfg)
    rows = scored.to_dicts()

    verbatim = rows[0]
    assert verbatim["roundtrip_rank"] == 1
    assert verbatim["score"] == pytest.approx(1.0)
    assert verbatim["answer_support"] == pytest.approx(1.0)
    assert verbatim["kept"] is True and verbatim["drop_reason"] is None

    nonsense = rows[1]
    assert nonsense["roundtrip_rank"] is None
    assert nonsense["score"] == 0.0
    assert nonsense["kept"] is False and nonsense["drop_reason"] == "roundtrip_miss"

    for col in ("roundtrip_rank", "answer_support", "duplicate", "score", "kept", "drop_reason"):
        assert col in scored.columns


def test_score_pairs_drops_near_duplicate_and_unsupported(mini_chunks, mini_index, base_model):
    sentence, holders = _verbatim_sentence(mini_chunks)
    base = {"query_type": "factual", "complexity": 1, "hops": 1, "doc_ids": ["x"], "generator": "t"}
    qa = qa_frame(
        [
            {**base, "question": sentence, "positive_chunk_ids": holders},
            # Same question with one word changed: cosine ≈ 1 with the first -> near duplicate.
            {**base, "question": sentence.replace("computed", "calculated"), "positive_chunk_ids": holders},
            # Right chunk, but an answer the chunk does not contain.
            {
                **base,
                "question": "hash_mem_multiplier work_mem hash table memory limit",
                "answer": "zebras eat bananas quantumly",
                "positive_chunk_ids": holders,
            },
        ]
    )
    scored = score_pairs(qa, mini_chunks, base_model, mini_index, QualityConfig())
    reasons = scored["drop_reason"].to_list()
    assert reasons[0] is None
    assert scored["duplicate"].to_list()[:2] == [False, True]
    assert reasons[1] == "near_duplicate"
    assert scored["answer_support"][2] == 0.0
    assert reasons[2] == "answer_unsupported"
    assert scored["kept"].to_list() == [True, False, False]
    assert filter_summary(scored) == {
        "kept": 1,
        "kept_by_lexical_only": 0,
        "dropped": {"answer_unsupported": 1, "near_duplicate": 1},
    }


def test_score_pairs_rank_min_score_and_judge(mini_chunks, mini_index, mini_vectors, base_model):
    sentence, holders = _verbatim_sentence(mini_chunks)
    question = "how much memory can a sort use before temporary files"
    # The base model's own ranking, by brute force over the chunk embeddings.
    qv = encode(base_model, [question])[0]
    second = mini_chunks["chunk_id"][int(np.argsort(-(mini_vectors @ qv))[1])]
    base = {"query_type": "factual", "complexity": 1, "hops": 1, "doc_ids": ["x"], "generator": "t"}
    qa = qa_frame(
        [
            {**base, "question": sentence, "positive_chunk_ids": holders},
            {**base, "question": question, "positive_chunk_ids": [second]},
        ]
    )
    scored = score_pairs(qa, mini_chunks, base_model, mini_index, QualityConfig(min_score=0.6))
    # Positive ranked second: reciprocal rank 1/2 = 0.5 < 0.6 -> below_min_score.
    assert scored["roundtrip_rank"].to_list() == [1, 2]
    assert scored["score"].to_list() == pytest.approx([1.0, 0.5])
    assert scored["drop_reason"].to_list() == [None, "below_min_score"]

    judged = qa.with_columns(pl.Series("judge_overall", [4.0, None]))
    scored = score_pairs(judged, mini_chunks, base_model, mini_index, QualityConfig(min_score=0.0))
    # Judge present: score = (1/rank + judge/10) / 2 = (1 + 0.4) / 2 = 0.7; judge 4 < 7 -> dropped.
    assert scored["score"][0] == pytest.approx(0.7)
    assert scored["drop_reason"][0] == "judge_below_threshold"
    # No judge for the second row: the score is the reciprocal rank alone.
    assert scored["score"][1] == pytest.approx(0.5)
    assert scored["drop_reason"][1] is None


def test_score_pairs_empty_frame(mini_chunks, mini_index, base_model):
    empty = qa_frame([])
    scored = score_pairs(empty, mini_chunks, base_model, mini_index, QualityConfig())
    assert scored.height == 0
    assert {"roundtrip_rank", "kept", "drop_reason", "score"} <= set(scored.columns)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dedup_cosine": 1.5}, "dedup_cosine"),
        ({"min_score": -0.1}, "min_score"),
        ({"min_answer_support": 2.0}, "min_answer_support"),
        ({"roundtrip_top_k": 0}, "roundtrip_top_k"),
        ({"lexical_top_k": -1}, "lexical_top_k"),
        ({"min_judge_overall": 11.0}, "min_judge_overall"),
    ],
)
def test_bad_quality_config_raises_naming_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        QualityConfig(**kwargs)


def test_bm25_keeps_an_error_code_question_the_base_model_misses(mini_chunks, mini_index, base_model):
    holders = [c for c, t in zip(mini_chunks["chunk_id"], mini_chunks["text"], strict=True) if "40P01" in t]
    qa = qa_frame(
        [
            {
                "question": "40P01",
                "query_type": "keyword",
                "complexity": 1,
                "hops": 1,
                "positive_chunk_ids": holders,
                "doc_ids": ["x"],
                "generator": "test",
            }
        ]
    )
    with_bm25 = score_pairs(
        qa, mini_chunks, base_model, mini_index, QualityConfig(roundtrip_top_k=1, lexical_top_k=1)
    )
    [row] = with_bm25.to_dicts()
    assert row["roundtrip_rank"] is None  # the base model does not place the bare code first...
    assert row["lexical_rank"] == 1  # ...BM25 does, so the pair is kept
    assert row["kept"] is True and row["drop_reason"] is None
    assert row["score"] == 0.0  # the score stays the base model's round trip

    dense_only = score_pairs(
        qa, mini_chunks, base_model, mini_index, QualityConfig(roundtrip_top_k=1, lexical_top_k=0)
    )
    [row] = dense_only.to_dicts()
    assert row["lexical_rank"] is None
    assert row["kept"] is False and row["drop_reason"] == "roundtrip_miss"
