"""A run after a corpus change pays only for what changed: the new document's chunks are the
only ones embedded and given questions; a deleted document's questions leave."""

from __future__ import annotations

import shutil

import dagster as dg
import polars as pl
import pytest

from embed_assets.defs.definitions import all_assets, build_resources
from embed_assets.generation.incremental import plan_incremental

SELECTION = ["source_documents", "document_chunks", "base_chunk_index", "synthetic_qa"]

NEW_DOCUMENT = """# lock_timeout

`lock_timeout` aborts any statement that waits longer than the given number of milliseconds
while trying to acquire a lock on a table, index, row, or other database object. Unlike
`statement_timeout`, it only counts time spent waiting for locks. A value of zero disables it.
SQLSTATE `55P03` (lock_not_available) is raised when the timeout expires.
"""


def _materialize(corpus, home, instance, **qa_config) -> dict[str, dict]:
    config = {
        "ops": {
            "source_documents": {"config": {"corpus_dir": str(corpus)}},
            "document_chunks": {"config": {"chunk_tokens": 96, "overlap_tokens": 16}},
            "synthetic_qa": {"config": qa_config},
        }
    }
    result = dg.materialize(
        all_assets,
        selection=SELECTION,
        run_config=config,
        resources=build_resources(str(home)),
        instance=instance,
    )
    assert result.success
    mats = {}
    for e in result.get_asset_materialization_events():
        mat = e.event_specific_data.materialization
        mats[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    mats["qa"] = result.output_for_node("synthetic_qa")
    mats["chunks"] = result.output_for_node("document_chunks")
    return mats


def test_adding_then_deleting_a_document(tmp_path, mini_corpus_dir):
    corpus = tmp_path / "corpus"
    shutil.copytree(mini_corpus_dir, corpus)
    home, instance = tmp_path / "home", dg.DagsterInstance.ephemeral()

    first = _materialize(corpus, home, instance)
    assert first["synthetic_qa"]["incremental"] is False  # nothing to start from
    assert first["base_chunk_index"]["embeddings_computed"] == first["chunks"].height

    (corpus / "lock_timeout.md").write_text(NEW_DOCUMENT)
    second = _materialize(corpus, home, instance)
    new_chunks = second["chunks"].filter(pl.col("doc_path") == "lock_timeout.md")
    assert new_chunks.height >= 1
    assert second["document_chunks"]["chunks_added"] == new_chunks.height
    assert second["document_chunks"]["chunks_deleted"] == 0
    assert second["base_chunk_index"]["embeddings_computed"] == new_chunks.height  # only the new ones
    assert second["base_chunk_index"]["embeddings_reused"] == first["chunks"].height
    qa = second["synthetic_qa"]
    assert qa["incremental"] is True and qa["chunks_generated_for"] == new_chunks.height
    assert qa["questions_reused"] == first["qa"].height
    written = second["qa"].filter(~pl.col("qa_id").is_in(first["qa"]["qa_id"].to_list()))
    assert written.height > 0
    new_ids = set(new_chunks["chunk_id"])
    assert all(set(p) <= new_ids for p in written["positive_chunk_ids"])  # questions for that document only
    assert any("lock_timeout" in q for q in written["question"])

    # Delete another document: its questions leave, nothing is generated or embedded.
    victim = sorted(p for p in corpus.iterdir() if p.name != "lock_timeout.md")[0]
    victim_chunks = set(second["chunks"].filter(pl.col("doc_path") == victim.name)["chunk_id"])
    victim.unlink()
    third = _materialize(corpus, home, instance)
    assert third["document_chunks"]["chunks_deleted"] == len(victim_chunks)
    assert third["synthetic_qa"]["chunks_generated_for"] == 0
    assert third["base_chunk_index"]["embeddings_computed"] == 0
    assert third["synthetic_qa"]["questions_dropped_with_their_chunks"] > 0
    assert not any(set(p) & victim_chunks for p in third["qa"]["positive_chunk_ids"])

    # Another recipe is a full run; so is incremental: false.
    full = _materialize(corpus, home, instance, questions_per_chunk=1)
    assert full["synthetic_qa"]["incremental"] is False
    assert full["synthetic_qa"]["chunks_generated_for"] == third["chunks"].height


@pytest.mark.parametrize("deleted", [False, True])
def test_plan_keeps_questions_whose_positives_all_remain(deleted):
    chunks = pl.DataFrame({"chunk_id": ["a", "b", "c"] if not deleted else ["a", "c"]})
    previous = pl.DataFrame({"qa_id": ["q1", "q2"], "positive_chunk_ids": [["a"], ["a", "b"]]})
    plan = plan_incremental(previous, {"a", "b"}, chunks)
    assert plan.to_generate["chunk_id"].to_list() == ["c"]
    assert plan.reused["qa_id"].to_list() == (["q1"] if deleted else ["q1", "q2"])
    assert plan.dropped == (1 if deleted else 0)
