"""Grouped splitting by source document, leak detection, and BEIR export."""

from __future__ import annotations

import random

import polars as pl
import pytest

from embed_assets.evaluation.retrieval import load_beir
from embed_assets.generation.base import qa_frame
from embed_assets.splitting.splits import SplitConfig, grouped_split, leaked_documents, write_beir


def _synthetic_qa(n_rows: int = 200, n_docs: int = 40, seed: int = 0) -> pl.DataFrame:
    """~200 questions over ~40 docs; every 10th row is a multi-hop question spanning two docs
    (a document and its pair partner)."""
    rng = random.Random(seed)
    records = []
    for i in range(n_rows):
        d = rng.randrange(n_docs)
        docs = [f"doc{d:02d}"]
        positives = [f"c{d:02d}_{rng.randrange(5)}"]
        if i % 10 == 0:
            e = d ^ 1  # pairs (0,1), (2,3), ...: groups stay small, as with real multi-hop pairs
            docs.append(f"doc{e:02d}")
            positives.append(f"c{e:02d}_{rng.randrange(5)}")
        records.append(
            {
                "question": f"question {i}",
                "query_type": "multi_hop" if len(docs) > 1 else "factual",
                "complexity": 4 if len(docs) > 1 else 1,
                "hops": len(docs),
                "positive_chunk_ids": positives,
                "doc_ids": docs,
                "generator": "test",
            }
        )
    return qa_frame(records)


def _doc_splits(split: pl.DataFrame) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for docs, s in zip(split["doc_ids"], split["split"], strict=True):
        for d in docs:
            out.setdefault(d, set()).add(s)
    return out


def test_no_document_in_two_splits():
    qa = _synthetic_qa()
    assert qa.height == 200
    split = grouped_split(qa, SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=1))
    assert set(split["split"]) == {"train", "val", "test"}
    assert all(len(s) == 1 for s in _doc_splits(split).values())
    assert leaked_documents(split) == set()


def test_multi_hop_chain_is_one_group():
    # doc A–B and B–C questions chain A, B and C together (union-find), whatever the seed.
    base = {"query_type": "factual", "complexity": 1, "hops": 1, "generator": "t"}
    records = [
        {**base, "question": "ab", "positive_chunk_ids": ["a1", "b1"], "doc_ids": ["A", "B"], "hops": 2},
        {**base, "question": "bc", "positive_chunk_ids": ["b2", "c1"], "doc_ids": ["B", "C"], "hops": 2},
        {**base, "question": "a", "positive_chunk_ids": ["a2"], "doc_ids": ["A"]},
        {**base, "question": "c", "positive_chunk_ids": ["c2"], "doc_ids": ["C"]},
    ]
    records += [
        {**base, "question": f"q{i}", "positive_chunk_ids": [f"x{i}"], "doc_ids": [f"X{i}"]}
        for i in range(20)
    ]
    qa = qa_frame(records)
    for seed in range(10):
        split = grouped_split(qa, SplitConfig(val_fraction=0.2, test_fraction=0.3, seed=seed))
        chain = split.filter(pl.col("question").is_in(["ab", "bc", "a", "c"]))["split"]
        assert chain.n_unique() == 1, seed
        assert leaked_documents(split) == set()


def test_deterministic_for_a_seed():
    qa = _synthetic_qa()
    a = grouped_split(qa, SplitConfig(seed=3))
    b = grouped_split(qa, SplitConfig(seed=3))
    assert a.equals(b)
    c = grouped_split(qa, SplitConfig(seed=4))
    assert not a["split"].equals(c["split"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fractions_roughly_respected(seed):
    # Shares are of document groups in expectation: 300 documents keep the chance spread small.
    qa = _synthetic_qa(n_rows=1500, n_docs=300, seed=seed)
    split = grouped_split(qa, SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=seed))
    share = split["split"].value_counts(normalize=True)
    frac = dict(zip(share["split"], share["proportion"], strict=True))
    assert frac["test"] == pytest.approx(0.2, abs=0.07)
    assert frac["val"] == pytest.approx(0.1, abs=0.05)
    assert frac["train"] == pytest.approx(0.7, abs=0.08)


def _doc_split(split: pl.DataFrame) -> dict[str, str]:
    return {d: next(iter(s)) for d, s in _doc_splits(split).items()}


def test_documents_keep_their_split_when_documents_are_added_or_removed():
    # A warm-started model trained on an earlier run's train split must never meet one of those
    # documents in the new test split: adding or removing documents moves no other document.
    qa = _synthetic_qa(n_rows=400, n_docs=80, seed=2)
    before = _doc_split(grouped_split(qa, SplitConfig(seed=7)))
    extra = _synthetic_qa(n_rows=60, n_docs=12, seed=9).with_columns(
        pl.col("doc_ids").list.eval(pl.lit("new-") + pl.element()),
        pl.col("positive_chunk_ids").list.eval(pl.lit("new-") + pl.element()),
    )
    after = _doc_split(grouped_split(pl.concat([qa, extra]), SplitConfig(seed=7)))
    assert {d: after[d] for d in before} == before
    assert any(d.startswith("new-") for d in after)
    # Half the test documents, each with its multi-hop partner (d ^ 1), so no remaining group changes.
    halves = sorted(d for d in before if before[d] == "test")[::2]
    removed = {d for doc in halves for d in (doc, f"doc{int(doc[3:]) ^ 1:02d}")}
    kept_rows = qa.filter(~pl.col("doc_ids").list.eval(pl.element().is_in(list(removed))).list.any())
    shrunk = _doc_split(grouped_split(kept_rows, SplitConfig(seed=7)))
    assert shrunk == {d: before[d] for d in shrunk}
    assert "test" in shrunk.values() and not removed & set(shrunk)


def test_tiny_corpus_still_gets_test_and_val():
    base = {"query_type": "factual", "complexity": 1, "hops": 1, "generator": "t"}
    qa = qa_frame(
        [
            {**base, "question": f"q{i}", "positive_chunk_ids": [f"c{i}"], "doc_ids": [f"D{i}"]}
            for i in range(3)
        ]
    )
    for seed in range(20):
        split = grouped_split(qa, SplitConfig(seed=seed))
        assert sorted(split["split"]) == ["test", "train", "val"], seed


def test_empty_frame_gets_split_column():
    out = grouped_split(qa_frame([]))
    assert out.height == 0 and "split" in out.columns


@pytest.mark.parametrize(
    "kwargs", [{"val_fraction": 1.0}, {"test_fraction": -0.1}, {"val_fraction": 0.5, "test_fraction": 0.5}]
)
def test_bad_split_config_raises(kwargs):
    with pytest.raises(ValueError):
        SplitConfig(**kwargs)


def test_leaked_documents_finds_injected_leak():
    split = grouped_split(_synthetic_qa(), SplitConfig(seed=5))
    test_doc = split.filter(pl.col("split") == "test")["doc_ids"][0][0]
    # A train question that also draws on a test document.
    leak = split.filter(pl.col("split") == "train").head(1)
    leak = leak.with_columns(
        pl.lit("leaky").alias("qa_id"), pl.col("doc_ids").list.concat(pl.lit([test_doc]))
    )
    leaked = leaked_documents(pl.concat([split, leak]))
    assert leaked == {test_doc}


def _beir_fixture():
    chunks = pl.DataFrame(
        {
            "chunk_id": ["c1", "c2", "c3", "c4"],
            "doc_id": ["A", "A", "B", "C"],
            "chunk_index": [0, 1, 0, 0],
            "text": ["alpha text", 'beta text with "quotes"', "gamma — unicode", "delta"],
        }
    )
    base = {"query_type": "factual", "complexity": 1, "hops": 1, "generator": "t"}
    qa = qa_frame(
        [
            {**base, "question": "what is alpha", "positive_chunk_ids": ["c1"], "doc_ids": ["A"]},
            {
                **base,
                "question": "alpha and gamma",
                "positive_chunk_ids": ["c2", "c3"],
                "doc_ids": ["A", "B"],
                "hops": 2,
            },
            {**base, "question": "what is delta", "positive_chunk_ids": ["c4"], "doc_ids": ["C"]},
        ]
    ).with_columns(pl.Series("split", ["test", "test", "train"]))
    return qa, chunks


def test_write_beir_readable_by_load_beir(tmp_path):
    qa, chunks = _beir_fixture()
    out = write_beir(qa, chunks, tmp_path / "beir")
    assert (out / "corpus.jsonl").exists() and (out / "qrels" / "test.tsv").exists()
    assert not (out / "qrels" / "train.tsv").exists()

    corpus, queries, qrels = load_beir(out, "test")
    # The corpus is every chunk, not only the test ones.
    assert corpus == dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    test_rows = qa.filter(pl.col("split") == "test")
    assert queries == dict(zip(test_rows["qa_id"], test_rows["question"], strict=True))
    assert qrels == {
        qid: dict.fromkeys(pos, 1)
        for qid, pos in zip(test_rows["qa_id"], test_rows["positive_chunk_ids"], strict=True)
    }
    with pytest.raises(FileNotFoundError, match="train"):
        load_beir(out, "train")


def test_write_beir_several_splits(tmp_path):
    qa, chunks = _beir_fixture()
    out = write_beir(qa, chunks, tmp_path / "beir", splits=("train", "test"))
    _, train_queries, train_qrels = load_beir(out, "train")
    train = qa.filter(pl.col("split") == "train")
    assert set(train_queries) == set(train["qa_id"]) == set(train_qrels)
    _, test_queries, _ = load_beir(out, "test")
    assert set(test_queries).isdisjoint(train_queries)


def test_write_beir_readable_by_beir_generic_loader(tmp_path):
    from beir.datasets.data_loader import GenericDataLoader

    qa, chunks = _beir_fixture()
    out = write_beir(qa, chunks, tmp_path / "beir")
    corpus, queries, qrels = GenericDataLoader(str(out)).load(split="test")

    assert set(corpus) == set(chunks["chunk_id"])
    assert corpus["c2"]["text"] == 'beta text with "quotes"'
    assert corpus["c3"]["text"] == "gamma — unicode"
    test_rows = qa.filter(pl.col("split") == "test")
    assert queries == dict(zip(test_rows["qa_id"], test_rows["question"], strict=True))
    multi = test_rows.filter(pl.col("hops") == 2)["qa_id"][0]
    assert qrels[multi] == {"c2": 1, "c3": 1}
