"""The LanceDB chunk index and positive-aware hard-negative mining, on real data."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

from embed_assets.generation.template import TemplateQuestionGenerator
from embed_assets.index.chunk_index import build_chunk_index, search
from embed_assets.mining.negatives import NEGATIVES_SCHEMA, MiningConfig, mine_hard_negatives
from embed_assets.models import encode


@pytest.fixture(scope="module")
def queries(mini_chunks):
    """A small slice of template questions (kept small: every mining call encodes them),
    including multi-positive ones."""
    qa = (
        TemplateQuestionGenerator()
        .generate(mini_chunks, questions_per_chunk=1, multi_hop_questions=5, seed=11)
        .qa
    )
    multi = qa.filter(pl.col("hops") == 2)
    assert multi.height >= 1, "want at least one multi-positive query"
    single = qa.filter(pl.col("hops") == 1).gather_every(3)
    return pl.concat([single, multi.head(3)])


@pytest.fixture(scope="module")
def location(mini_chunks):
    return {
        c: (d, i)
        for c, d, i in zip(
            mini_chunks["chunk_id"], mini_chunks["doc_id"], mini_chunks["chunk_index"], strict=True
        )
    }


@pytest.fixture(scope="module")
def mined_default(queries, base_model, mini_index):
    return mine_hard_negatives(queries, base_model, mini_index, MiningConfig())


def _neighbour_negatives(mined: pl.DataFrame, location) -> int:
    n = 0
    for pos, negs in zip(mined["positive_chunk_ids"], mined["negative_chunk_ids"], strict=True):
        for c in negs:
            d, i = location[c]
            n += any(location[p][0] == d and abs(location[p][1] - i) <= 1 for p in pos)
    return n


# --- index + search ----------------------------------------------------------------------------


def test_index_holds_every_chunk(mini_index, mini_chunks):
    assert mini_index.count() == mini_chunks.height
    assert mini_index.has_ann_index() is False  # far below the ANN threshold: exact search


def test_stored_vectors_are_the_chunk_embeddings(mini_chunks, mini_vectors, base_model):
    # Spot-check alignment of ids and vectors (batches of 256 are written in order).
    rows = [0, mini_chunks.height // 2, mini_chunks.height - 1]
    fresh = encode(base_model, [mini_chunks["text"][i] for i in rows])
    np.testing.assert_allclose(mini_vectors[rows], fresh, atol=1e-4)


def test_search_is_exact_and_best_first(mini_index, mini_chunks, mini_vectors, base_model):
    q = encode(base_model, ["work_mem memory for sort operations", "wal_level replica logical", "hello"])
    ids = mini_chunks["chunk_id"].to_list()
    results = list(search(mini_index, q, 5, columns=("chunk_id", "doc_id"), batch_size=2))
    assert [r for r, _, _ in results] == [0, 1, 2]  # every query once, in order, across batches
    for row, hits, scores in results:
        assert len(hits["chunk_id"]) == len(hits["doc_id"]) == len(scores) == 5
        assert np.all(np.diff(scores) <= 1e-6), "not best first"
        # Same top-5 as a brute-force scan, and scores are the cosine (dot of unit vectors).
        brute = mini_vectors @ q[row]
        top = np.argsort(-brute)[:5]
        assert hits["chunk_id"] == [ids[i] for i in top]
        np.testing.assert_allclose(scores, brute[top], atol=1e-4)


def test_ann_index_on_synthetic_chunks(base_model, tmp_path):
    # 256 rows is the least LanceDB's PQ trains on (below it, the "index" indexes no row).
    rng = random.Random(0)
    topics = ["vacuum", "checkpoint", "replication", "index", "lock", "wal", "sort", "hash", "toast", "slot"]
    rows = [
        {
            "chunk_id": f"c{i:03d}",
            "doc_id": f"d{i // 10}",
            "chunk_index": i % 10,
            "text": f"{rng.choice(topics)} {rng.choice(topics)} {i}",
        }
        for i in range(270)
    ]
    chunks = pl.DataFrame(rows)
    index = build_chunk_index(chunks, base_model, tmp_path / "ann", ann_threshold=256)
    assert index.count() == 270
    assert index.has_ann_index() is True
    [ivf] = [ix for ix in index.open().list_indices() if "vector" in ix.columns]
    assert index.open().index_stats(ivf.name).num_indexed_rows == 270

    target = rows[123]["text"]
    [(row, hits, scores)] = list(search(index, encode(base_model, [target]), 10))
    assert row == 0
    assert len(hits["chunk_id"]) == 10
    assert np.all(np.diff(scores) <= 1e-6)
    assert hits["chunk_id"][0] == "c123"
    assert scores[0] == pytest.approx(1.0, abs=1e-3)


def test_rebuild_replaces_table(mini_chunks, base_model, tmp_path):
    index = build_chunk_index(mini_chunks.head(3), base_model, tmp_path / "db")
    assert index.count() == 3
    index = build_chunk_index(mini_chunks.slice(3, 2), base_model, tmp_path / "db")
    assert index.count() == 2
    assert set(index.open().to_arrow()["chunk_id"].to_pylist()) == set(mini_chunks["chunk_id"][3:5])


# --- mining -------------------------------------------------------------------------------------


def test_mined_frame_shape(mined_default, queries):
    mined, counts, dist = mined_default
    assert dict(mined.schema) == NEGATIVES_SCHEMA
    assert mined.height == queries.height
    assert mined["qa_id"].to_list() == queries["qa_id"].to_list()
    assert counts["candidates"] > 0 and counts["removed_positive"] >= queries.height
    assert len(dist["positive"]) == mined.height
    assert len(dist["negative"]) == mined["negative_chunk_ids"].list.len().sum()


def test_no_negative_is_a_positive(mined_default):
    mined, _, _ = mined_default
    for pos, negs in zip(mined["positive_chunk_ids"], mined["negative_chunk_ids"], strict=True):
        assert not set(pos) & set(negs)
        assert len(set(negs)) == len(negs)


def test_negatives_below_score_ceiling(mined_default):
    mined, _, _ = mined_default
    checked = 0
    for p, scores in zip(mined["positive_score"], mined["negative_scores"], strict=True):
        for s in scores:
            assert s <= 0.95 * p + 1e-5
            checked += 1
        assert list(scores) == sorted(scores, reverse=True)
    assert checked > 0


def test_scores_are_real_cosines(mined_default, queries, base_model, mini_chunks, mini_vectors):
    mined, _, _ = mined_default
    row_of = {c: i for i, c in enumerate(mini_chunks["chunk_id"])}
    qvec = encode(base_model, mined["question"].to_list())
    for i, r in enumerate(mined.iter_rows(named=True)):
        pos = [float(mini_vectors[row_of[c]] @ qvec[i]) for c in r["positive_chunk_ids"]]
        # Multi-positive queries use the weakest positive.
        assert r["positive_score"] == pytest.approx(min(pos), abs=1e-4)
        for c, s in zip(r["negative_chunk_ids"], r["negative_scores"], strict=True):
            assert s == pytest.approx(float(mini_vectors[row_of[c]] @ qvec[i]), abs=1e-4)


def test_neighbours_excluded(mined_default, queries, base_model, mini_index, location):
    mined, counts, _ = mined_default
    assert counts.get("removed_neighbour", 0) > 0
    assert _neighbour_negatives(mined, location) == 0
    # Without the rule, neighbours do show up: the check above can fail.
    loose, loose_counts, _ = mine_hard_negatives(
        queries, base_model, mini_index, MiningConfig(exclude_neighbours=False)
    )
    assert "removed_neighbour" not in loose_counts
    assert _neighbour_negatives(loose, location) > 0


@pytest.mark.parametrize("n", [0, 3])
def test_num_negatives_respected(queries, base_model, mini_index, n):
    mined, counts, _ = mine_hard_negatives(queries, base_model, mini_index, MiningConfig(num_negatives=n))
    lens = mined["negative_chunk_ids"].list.len()
    assert lens.max() <= n
    assert (lens == n).sum() >= 0.8 * mined.height
    assert counts.get("queries_short_of_negatives", 0) == int((lens < n).sum())


def test_absolute_margin_tightens(mined_default, queries, base_model, mini_index):
    _, base_counts, _ = mined_default
    margin = 0.15
    mined, counts, _ = mine_hard_negatives(
        queries, base_model, mini_index, MiningConfig(absolute_margin=margin)
    )
    assert counts["removed_by_ceiling"] > base_counts["removed_by_ceiling"]
    for p, scores in zip(mined["positive_score"], mined["negative_scores"], strict=True):
        for s in scores:
            assert s <= min(0.95 * p, p - margin) + 1e-5


def test_range_window(queries, base_model, mini_index, mined_default):
    top, _, _ = mined_default
    later, _, _ = mine_hard_negatives(
        queries, base_model, mini_index, MiningConfig(range_min=10, range_max=30)
    )
    # Ranks 10..29 are a subset of 0..49, so the best of them never beats the best of all,
    # and skipping the first 10 eligible ranks gives lower-scoring negatives on average.
    for a, b in zip(top["negative_scores"].to_list(), later["negative_scores"].to_list(), strict=True):
        if a and b:
            assert max(b) <= max(a) + 1e-6
    assert later["negative_scores"].list.max().mean() < top["negative_scores"].list.max().mean()


def test_random_sampling_deterministic(queries, base_model, mini_index, mined_default):
    cfg = MiningConfig(sampling="random", seed=5, num_negatives=3)
    a, _, _ = mine_hard_negatives(queries, base_model, mini_index, cfg)
    b, _, _ = mine_hard_negatives(queries, base_model, mini_index, cfg)
    assert a.equals(b)
    top, _, _ = mine_hard_negatives(queries, base_model, mini_index, MiningConfig(num_negatives=3))
    assert not a["negative_chunk_ids"].equals(top["negative_chunk_ids"])
    for scores in a["negative_scores"]:
        assert list(scores) == sorted(scores, reverse=True)


def test_query_without_indexed_positive_is_counted(base_model, mini_index):
    q = pl.DataFrame(
        {"qa_id": ["x"], "question": ["anything"], "positive_chunk_ids": [["not-in-index"]]},
        schema={"qa_id": pl.String, "question": pl.String, "positive_chunk_ids": pl.List(pl.String)},
    )
    mined, counts, _ = mine_hard_negatives(q, base_model, mini_index)
    assert mined.height == 0
    assert counts["queries_without_indexed_positive"] == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_negatives": -1}, "num_negatives"),
        ({"max_score_ratio": 1.5}, "max_score_ratio"),
        ({"max_score_ratio": 0.0}, "max_score_ratio"),
        ({"absolute_margin": -0.1}, "absolute_margin"),
        ({"range_min": 5, "range_max": 5}, "range_min"),
        ({"sampling": "best"}, "sampling"),
    ],
)
def test_bad_mining_config_raises(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MiningConfig(**kwargs)
