"""Labelled queries: reading a BEIR-style folder that names the corpus' documents, and scoring
documents by their best chunk."""

from pathlib import Path

import pytest

from embed_assets.evaluation.labelled import (
    LabelledQueriesError,
    document_aliases,
    document_run,
    load_labelled_queries,
    without_queries_that_chose,
)
from embed_assets.evaluation.metrics import ir_metrics
from embed_assets.evaluation.retrieval import retrieve

MINI_LABELLED = Path(__file__).parent / "fixtures" / "mini_labelled"


@pytest.fixture
def doc_paths(mini_documents) -> list[str]:
    return mini_documents["doc_path"].to_list()


def write_set(folder: Path, queries: str, qrels: str, split: str = "test") -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "queries.jsonl").write_text(queries)
    (folder / "qrels" / f"{split}.tsv").write_text(qrels)
    return folder


def test_judgments_on_unknown_documents_are_skipped_and_counted(doc_paths):
    labelled = load_labelled_queries(MINI_LABELLED, "test", doc_paths)
    assert sorted(labelled.queries) == [f"q{i}" for i in range(1, 8)]
    assert labelled.skipped == {
        "judgment_unknown_document": 2,
        "query_without_relevant_document": 1,
        "query_without_text": 1,
    }
    assert labelled.unknown_documents == ["release-notes-removed-long-ago.md", "not-in-the-corpus.md"]
    # A judgment of grade 0 stays: it is a labelled non-relevant document.
    assert labelled.qrels["q5"] == {"sql-altersystem.md": 2, "runtime-config-custom.html": 0}
    assert labelled.qrels["q7"] == {"release-15-17.md": 2}
    assert labelled.source.endswith("mini_labelled/qrels/test.tsv")


def test_fingerprint_follows_the_content(doc_paths, tmp_path):
    a = load_labelled_queries(MINI_LABELLED, "test", doc_paths)
    assert load_labelled_queries(MINI_LABELLED, "test", doc_paths).fingerprint == a.fingerprint
    queries = (MINI_LABELLED / "queries.jsonl").read_text().replace("30 seconds", "a minute")
    qrels = (MINI_LABELLED / "qrels" / "test.tsv").read_text()
    b = load_labelled_queries(write_set(tmp_path, queries, qrels), "test", doc_paths)
    assert b.fingerprint != a.fingerprint


def test_queries_that_chose_the_model_are_left_out_of_its_evaluation(doc_paths):
    """A query with the same id and text as one that chose the model is dropped and counted;
    the same id with other text is another query and stays; when none is left, the error names
    the file."""
    labelled = load_labelled_queries(MINI_LABELLED, "test", doc_paths)
    chose = {"q1": labelled.queries["q1"], "q2": labelled.queries["q2"], "q3": "some other question"}
    left = without_queries_that_chose(labelled, chose)
    assert sorted(left.queries) == sorted(set(labelled.queries) - {"q1", "q2"}) == sorted(left.qrels)
    assert left.skipped == {**labelled.skipped, "query_chose_the_model": 2}
    assert left.fingerprint != labelled.fingerprint and left.source == labelled.source
    assert without_queries_that_chose(labelled, {}) is labelled
    with pytest.raises(LabelledQueriesError, match=r"qrels/test\.tsv: all 7 of them chose"):
        without_queries_that_chose(labelled, labelled.queries)


def test_missing_split_names_the_file(doc_paths):
    with pytest.raises(LabelledQueriesError, match=r"qrels/train\.tsv"):
        load_labelled_queries(MINI_LABELLED, "train", doc_paths)


def test_malformed_lines_are_named(doc_paths, tmp_path):
    good_q = '{"_id": "q1", "text": "work_mem"}\n'
    with pytest.raises(LabelledQueriesError, match=r"test\.tsv:2: score 'high' is not an integer"):
        load_labelled_queries(
            write_set(tmp_path / "a", good_q, "q\tc\ts\nq1\tsql-altersystem.md\thigh\n"), "test", doc_paths
        )
    with pytest.raises(LabelledQueriesError, match=r"test\.tsv:1: expected query-id, corpus-id, score"):
        load_labelled_queries(
            write_set(tmp_path / "b", good_q, "q1 sql-altersystem.md 1\n"), "test", doc_paths
        )
    with pytest.raises(
        LabelledQueriesError, match=r"queries\.jsonl:2: expected a JSON object with _id and text"
    ):
        load_labelled_queries(
            write_set(tmp_path / "c", good_q + '{"id": "q2"}\n', "q1\tsql-altersystem.md\t1\n"),
            "test",
            doc_paths,
        )


def test_a_set_that_names_no_document_says_what_names_are_expected(doc_paths, tmp_path):
    folder = write_set(tmp_path, '{"_id": "q1", "text": "x"}\n', "q1\tdocs/sql-altersystem\t1\n")
    with pytest.raises(
        LabelledQueriesError, match=r"name none of the corpus' documents.*docs/sql-altersystem"
    ):
        load_labelled_queries(folder, "test", doc_paths)


def test_a_duplicate_documents_name_finds_the_kept_copy(doc_paths, tmp_path):
    folder = write_set(
        tmp_path,
        '{"_id": "q1", "text": "cluster-wide settings"}\n',
        "q1\tcopies/sql-altersystem.md\t2\nq1\tsql-altersystem.md\t1\n",
    )
    labelled = load_labelled_queries(
        folder, "test", doc_paths, other_names={"copies/sql-altersystem.md": "sql-altersystem.md"}
    )
    assert labelled.qrels == {"q1": {"sql-altersystem.md": 2}}  # two names, one document, the higher grade
    assert labelled.skipped["judgment_unknown_document"] == 0


def test_production_table_rows_can_be_named_by_their_id():
    aliases = document_aliases(["lancedb://kb/17", "runbooks/db.md"])
    assert aliases == {
        "lancedb://kb/17": "lancedb://kb/17",
        "17": "lancedb://kb/17",
        "runbooks/db.md": "runbooks/db.md",
    }


def test_document_run_keeps_each_documents_best_chunk():
    chunk_run = {"q": {"a#0": 0.2, "b#0": 0.5, "a#1": 0.9, "c#0": 0.1, "b#1": 0.6}}
    chunk_doc = {"a#0": "a", "a#1": "a", "b#0": "b", "b#1": "b", "c#0": "c"}
    assert document_run(chunk_run, chunk_doc, top_k=2) == {"q": {"a": 0.9, "b": 0.6}}


def test_base_model_finds_hand_written_queries_documents(base_model, mini_chunks, doc_paths):
    """End to end on the real model: chunk retrieval, then documents by best chunk."""
    labelled = load_labelled_queries(MINI_LABELLED, "test", doc_paths)
    corpus = dict(zip(mini_chunks["chunk_id"], mini_chunks["text"], strict=True))
    chunk_doc = dict(zip(mini_chunks["chunk_id"], mini_chunks["doc_path"], strict=True))
    run = document_run(retrieve(base_model, corpus, labelled.queries, top_k=len(corpus)), chunk_doc)
    assert all(len(hits) == len(set(chunk_doc.values())) for hits in run.values())  # every document, once
    assert next(iter(run["q1"])) == "runtime-config-resource-work-mem.md"
    assert next(iter(run["q3"])) == "runtime-config-client-timeouts.txt"
    assert ir_metrics(labelled.qrels, run)["NDCG@10"] > 0.5


def test_a_split_set_aside_for_choosing_is_a_validation_set_over_its_judged_documents(mini_chunks, doc_paths):
    """The dev split as the validation set that chooses the model: every chunk of a relevant
    document is relevant, a document judged 0 is in the corpus but not relevant, distractors are
    sampled from the rest, and the same seed gives the same set."""
    from embed_assets.training.validation import labelled_validation_set

    dev = load_labelled_queries(MINI_LABELLED, "dev", doc_paths)
    assert set(dev.queries) == {"d1", "d2", "d3", "d4", "d5"}
    chunks_of: dict[str, set[str]] = {}
    for chunk_id, doc in zip(mini_chunks["chunk_id"], mini_chunks["doc_path"], strict=True):
        chunks_of.setdefault(doc, set()).add(chunk_id)
    val = labelled_validation_set(dev.queries, dev.qrels, mini_chunks, distractors=3, seed=1)
    assert val.queries == dev.queries
    assert val.relevant["d1"] == chunks_of["mvcc-serialization-failure-handling.md"]
    assert val.relevant["d3"] == chunks_of["runtime-config-custom.html"]  # grade 0 is not relevant...
    assert chunks_of["sql-altersystem.md"] <= set(val.corpus)  # ...but it is searched
    judged = set().union(*(chunks_of[d] for q in dev.qrels.values() for d in q))
    assert judged <= set(val.corpus) and len(val.corpus) == len(judged) + 3
    assert all(val.corpus[c] for c in val.corpus)
    again = labelled_validation_set(dev.queries, dev.qrels, mini_chunks, distractors=3, seed=1)
    assert again == val

    # A budget of chunks takes queries in seeded order while their documents fit; at least one.
    small = labelled_validation_set(dev.queries, dev.qrels, mini_chunks, distractors=0, seed=1, max_chunks=10)
    assert 1 <= len(small.queries) < len(val.queries)
    assert len(small.corpus) <= 10 or len(small.queries) == 1
    assert all(small.relevant[q] == val.relevant[q] <= set(small.corpus) for q in small.queries)
    # Judgments on no chunked document leave nothing to choose on.
    assert labelled_validation_set({"x": "q"}, {"x": {"gone.md": 2}}, mini_chunks, 3, 1) is None
