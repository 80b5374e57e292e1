"""The corpus-change sensor: content fingerprints, the user's recipe in every run it requests,
no run for a touch or a compaction, a retrain for a revert."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dagster as dg
import pytest

from embed_assets.defs.configs import validate_run_config
from embed_assets.defs.sensors import CorpusSourceResource, corpus_change_sensor, corpus_fingerprint


def _tick(source: CorpusSourceResource, cursor: str | None):
    """One evaluation, with a real sensor context; returns (result, the cursor after it)."""
    context = dg.build_sensor_context(cursor=cursor, resources={"corpus_source": source})
    return corpus_change_sensor(context), context.cursor


def test_changes_request_one_run_with_the_recipe_and_touch_does_not(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\n`work_mem` sets memory.")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "ops:\n"
        "  synthetic_qa: {config: {questions_per_chunk: 3}}\n"
        "  finetuned_model: {config: {max_steps: 120, learning_rate: 3.0e-5}}\n"
        "  source_documents: {config: {corpus_dir: /elsewhere}}\n"
        "resources:\n"
        "  recipe: {config: {preset: titled-documents}}\n"
    )
    source = CorpusSourceResource(corpus_dir=str(corpus), recipe=str(recipe))
    first, cursor = _tick(source, None)
    assert isinstance(first, dg.RunRequest)
    ops = first.run_config["ops"]
    assert ops["source_documents"]["config"] == {"corpus_dir": str(corpus)}  # the source wins
    assert ops["synthetic_qa"]["config"] == {"questions_per_chunk": 3}
    # a recipe file in the layout before the training settings moved to training_recipe still works
    assert ops["training_recipe"]["config"] == {
        "finetuned_model": {"max_steps": 120, "learning_rate": 3.0e-5}
    }
    assert "finetuned_model" not in ops
    assert first.run_config["resources"]["recipe"]["config"] == {"preset": "titled-documents"}
    validate_run_config(first.run_config)

    unchanged, cursor = _tick(source, cursor)
    assert isinstance(unchanged, dg.SkipReason)
    # Touch: a new modification time, the same content. No retrain.
    os.utime(corpus / "a.md", (1, 1))
    touched, cursor = _tick(source, cursor)
    assert isinstance(touched, dg.SkipReason), touched

    (corpus / "b.md").write_text("# B\n\n`shared_buffers` sets memory.")
    changed, cursor = _tick(source, cursor)
    assert isinstance(changed, dg.RunRequest)
    assert changed.run_key != first.run_key
    assert isinstance(_tick(source, cursor)[0], dg.SkipReason)  # exactly one request per state


def test_a_revert_retrains_under_a_new_run_key(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\nkept")
    source = CorpusSourceResource(corpus_dir=str(corpus))
    first, cursor = _tick(source, None)
    (corpus / "b.md").write_text("# B\n\nadded, then deleted")
    added, cursor = _tick(source, cursor)
    (corpus / "b.md").unlink()
    reverted, cursor = _tick(source, cursor)
    assert isinstance(reverted, dg.RunRequest)
    # The same content as the first state, but a new change: Dagster would drop a repeated key.
    assert reverted.tags["embed_assets/corpus_fingerprint"] == first.tags["embed_assets/corpus_fingerprint"]
    assert len({first.run_key, added.run_key, reverted.run_key}) == 3
    assert json.loads(cursor)["changes"] == 3


def test_sensor_skips_a_missing_folder_and_a_bad_recipe(tmp_path):
    missing = CorpusSourceResource(corpus_dir=str(tmp_path / "missing"))
    assert isinstance(_tick(missing, None)[0], dg.SkipReason)
    (tmp_path / "a.md").write_text("x")
    (tmp_path / "bad.yaml").write_text("ops: {qa_quality_scores: {config: {dedup_cosine: 1.5}}}\n")
    bad = CorpusSourceResource(corpus_dir=str(tmp_path), recipe=str(tmp_path / "bad.yaml"))
    skipped, cursor = _tick(bad, None)
    assert isinstance(skipped, dg.SkipReason) and "dedup_cosine" in skipped.skip_message
    assert cursor is None  # not consumed: the first tick after the fix requests the run
    (tmp_path / "list.yaml").write_text("- not\n- a mapping\n")
    listed = CorpusSourceResource(corpus_dir=str(tmp_path), recipe=str(tmp_path / "list.yaml"))
    assert "must be a mapping" in _tick(listed, None)[0].skip_message


def test_fingerprint_is_content_and_ignores_unsupported_files(tmp_path):
    (tmp_path / "a.md").write_text("x")
    before = corpus_fingerprint(tmp_path)
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert corpus_fingerprint(tmp_path) == before
    (tmp_path / "a.md").write_text("y")
    assert corpus_fingerprint(tmp_path) != before


def test_a_production_lancedb_table_with_its_columns(tmp_path):
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(tmp_path / "prod"))
    tbl = db.create_table(
        "kb", data=pa.table({"pk": ["a"], "body": ["`work_mem` sets memory"], "heading": ["Memory"]})
    )
    source = CorpusSourceResource(
        lancedb_uri=str(tmp_path / "prod"),
        lancedb_table="kb",
        text_column="body",
        title_column="heading",
        id_column="pk",
    )
    first, cursor = _tick(source, None)
    assert isinstance(first, dg.RunRequest)
    assert first.run_config["ops"]["source_documents"]["config"] == {
        "lancedb_uri": str(tmp_path / "prod"),
        "lancedb_table": "kb",
        "text_column": "body",
        "title_column": "heading",
        "id_column": "pk",
    }
    validate_run_config(first.run_config)
    for i in range(3):  # several small writes, then a compaction: new table versions, no new content
        tbl.add(pa.table({"pk": [f"x{i}"], "body": [f"row {i}"], "heading": ["h"]}))
    grown, cursor = _tick(source, cursor)
    assert isinstance(grown, dg.RunRequest)
    version = tbl.version
    tbl.optimize()
    assert tbl.version > version
    assert isinstance(_tick(source, cursor)[0], dg.SkipReason)
    tbl.update(where="pk = 'a'", values={"body": "`work_mem` sets memory for sorts"})
    assert isinstance(_tick(source, cursor)[0], dg.RunRequest)


def test_a_jsonl_corpus_and_labelled_queries(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "`work_mem` sets memory"}\n')
    source = CorpusSourceResource(
        corpus_jsonl=str(corpus),
        labelled_queries_dir=str(tmp_path / "labelled"),
        labelled_queries_split="test",
        selection_queries_split="dev",
    )
    first, cursor = _tick(source, None)
    ops = first.run_config["ops"]
    assert ops["source_documents"]["config"] == {"corpus_jsonl": str(corpus)}
    assert ops["retrieval_eval"]["config"] == {
        "labelled_queries_dir": str(tmp_path / "labelled"),
        "labelled_queries_split": "test",
    }
    assert ops["training_recipe"]["config"] == {
        "finetuned_model": {"selection_queries_split": "dev"},
        "selection_queries_dir": str(tmp_path / "labelled"),
    }
    validate_run_config(first.run_config)
    assert isinstance(_tick(source, cursor)[0], dg.SkipReason)
    corpus.write_text(corpus.read_text() + '{"_id": "b", "text": "`shared_buffers` sets memory"}\n')
    assert isinstance(_tick(source, cursor)[0], dg.RunRequest)
    corpus.unlink()
    assert isinstance(_tick(source, cursor)[0], dg.SkipReason)


@pytest.mark.parametrize("var", ["EMBED_ASSETS_CORPUS_JSONL", "EMBED_ASSETS_RECIPE"])
def test_environment_variables_are_only_defaults(var, monkeypatch):
    monkeypatch.setenv(var, "/from/env")
    import importlib

    import embed_assets.defs.sensors as sensors

    reloaded = importlib.reload(sensors)
    field = {"EMBED_ASSETS_CORPUS_JSONL": "corpus_jsonl", "EMBED_ASSETS_RECIPE": "recipe"}[var]
    assert getattr(reloaded.CorpusSourceResource(), field) == "/from/env"
    assert getattr(reloaded.CorpusSourceResource(**{field: "/explicit"}), field) == "/explicit"
    monkeypatch.delenv(var)
    importlib.reload(sensors)
