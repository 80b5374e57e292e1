"""The corpus-change sensor requests a run only when the corpus changes, and keeps a cursor."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dagster as dg

from embed_assets.defs.sensors import corpus_change_sensor, corpus_fingerprint


def test_sensor_fires_on_change_and_keeps_cursor(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\n`work_mem` sets memory.")
    monkeypatch.setenv("EMBED_ASSETS_CORPUS_DIR", str(corpus))

    first = corpus_change_sensor(dg.build_sensor_context(cursor=None))
    assert isinstance(first, dg.RunRequest)
    assert first.run_config["ops"]["source_documents"]["config"]["corpus_dir"] == str(corpus)
    cursor = corpus_fingerprint(corpus)

    unchanged = corpus_change_sensor(dg.build_sensor_context(cursor=cursor))
    assert isinstance(unchanged, dg.SkipReason)

    (corpus / "b.md").write_text("# B\n\n`shared_buffers` sets memory.")
    changed = corpus_change_sensor(dg.build_sensor_context(cursor=cursor))
    assert isinstance(changed, dg.RunRequest)
    assert changed.run_key != first.run_key


def test_sensor_skips_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBED_ASSETS_CORPUS_DIR", str(tmp_path / "missing"))
    assert isinstance(corpus_change_sensor(dg.build_sensor_context()), dg.SkipReason)


def test_fingerprint_ignores_unsupported_files(tmp_path):
    (tmp_path / "a.md").write_text("x")
    before = corpus_fingerprint(tmp_path)
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert corpus_fingerprint(tmp_path) == before


def test_sensor_watches_a_production_lancedb_table(tmp_path, monkeypatch):
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(tmp_path / "prod"))
    tbl = db.create_table("chunks", data=pa.table({"id": ["a"], "text": ["`work_mem` sets memory"]}))
    monkeypatch.setenv("EMBED_ASSETS_LANCEDB_URI", str(tmp_path / "prod"))
    first = corpus_change_sensor(dg.build_sensor_context(cursor=None))
    assert isinstance(first, dg.RunRequest)
    assert first.run_config["ops"]["source_documents"]["config"]["lancedb_table"] == "chunks"
    cursor = first.tags["embed_assets/corpus_fingerprint"]
    assert isinstance(corpus_change_sensor(dg.build_sensor_context(cursor=cursor)), dg.SkipReason)
    tbl.add(pa.table({"id": ["b"], "text": ["`shared_buffers` sets memory"]}))
    assert isinstance(corpus_change_sensor(dg.build_sensor_context(cursor=cursor)), dg.RunRequest)


def test_sensor_watches_a_jsonl_corpus_and_carries_the_labelled_queries(tmp_path, monkeypatch):
    from embed_assets.defs.configs import validate_run_config

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "`work_mem` sets memory"}\n')
    monkeypatch.setenv("EMBED_ASSETS_CORPUS_JSONL", str(corpus))
    monkeypatch.setenv("EMBED_ASSETS_LABELLED_QUERIES", str(tmp_path / "labelled"))
    monkeypatch.setenv("EMBED_ASSETS_LABELLED_SPLIT", "dev")
    first = corpus_change_sensor(dg.build_sensor_context(cursor=None))
    assert isinstance(first, dg.RunRequest)
    ops = first.run_config["ops"]
    assert ops["source_documents"]["config"] == {"corpus_jsonl": str(corpus)}
    assert ops["retrieval_eval"]["config"] == {
        "labelled_queries_dir": str(tmp_path / "labelled"),
        "labelled_queries_split": "dev",
    }
    validate_run_config(first.run_config)
    cursor = first.tags["embed_assets/corpus_fingerprint"]
    assert isinstance(corpus_change_sensor(dg.build_sensor_context(cursor=cursor)), dg.SkipReason)
    corpus.write_text(corpus.read_text() + '{"_id": "b", "text": "`shared_buffers` sets memory"}\n')
    assert isinstance(corpus_change_sensor(dg.build_sensor_context(cursor=cursor)), dg.RunRequest)
    corpus.unlink()
    assert isinstance(corpus_change_sensor(dg.build_sensor_context(cursor=cursor)), dg.SkipReason)
