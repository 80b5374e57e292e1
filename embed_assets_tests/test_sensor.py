"""The corpus-change sensor: content fingerprints, the user's recipe in every run it requests,
no run for a touch or a compaction, a retrain for a revert; a LanceDB table's fingerprint read
incrementally (only new fragments' rows), and the same whatever the cache holds."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dagster as dg
import pytest

from embed_assets.defs import lancedb_fingerprint as lf
from embed_assets.defs.configs import validate_run_config
from embed_assets.defs.sensors import (
    CorpusSourceResource,
    corpus_change_sensor,
    corpus_fingerprint,
    lancedb_fingerprint,
    legacy_lancedb_fingerprint,
)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """The fingerprint cache goes to the artifact home: a temporary one, not the checkout's."""
    monkeypatch.setenv("EMBED_ASSETS_HOME", str(tmp_path / "home"))


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


def _rows(ids, text="text {}"):
    import pyarrow as pa

    return pa.table(
        {"id": [f"d{i}" for i in ids], "text": [text.format(i) for i in ids], "title": ["T"] * len(ids)}
    )


@pytest.fixture
def kb(tmp_path):
    """A LanceDB table written in five appends (five fragments), and its fingerprint function."""
    import lancedb

    db = lancedb.connect(str(tmp_path / "db"))
    tbl = db.create_table("kb", data=_rows(range(40)))
    for start in range(40, 200, 40):
        tbl.add(_rows(range(start, start + 40)))
    return db, tbl, lambda: lancedb_fingerprint(str(tmp_path / "db"), "kb", ["text", "title", "id"])


@pytest.fixture
def spy(monkeypatch):
    """Which fragments each call hashed (None: all) and whose row addresses it read."""
    calls = {"hashed": [], "addresses": []}
    hash_rows, live = lf.row_hashes, lf.live_offsets

    def row_hashes(ds, columns, fragments):
        calls["hashed"].append(None if fragments is None else [f.id for f in fragments])
        return hash_rows(ds, columns, fragments)

    def live_offsets(ds, fragments):
        calls["addresses"].append([f.id for f in fragments])
        return live(ds, fragments)

    monkeypatch.setattr(lf, "row_hashes", row_hashes)
    monkeypatch.setattr(lf, "live_offsets", live_offsets)
    return calls


def test_lancedb_fingerprint_is_content_not_fragments_or_order(kb):
    db, tbl, fingerprint = kb
    first = fingerprint()
    # The value is content only, and fixed: cursors written by earlier versions of this scheme
    # (it once read Lance's manifest by hand) stay valid.
    assert first == "rows-0df1f5b7e71a0000"
    tbl.optimize()  # compaction: other fragments, other version, the same rows
    assert fingerprint() == first
    shuffled = tbl.to_arrow().take([(7 * i) % 200 for i in range(200)])  # 7 is prime to 200
    db.create_table("kb", data=shuffled, mode="overwrite")
    assert fingerprint() == first


def test_lancedb_fingerprint_changes_on_add_delete_update_and_comes_back(kb):
    _, tbl, fingerprint = kb
    first = fingerprint()
    seen = {first}
    tbl.add(_rows([500]))
    seen.add(fingerprint())
    tbl.delete("id = 'd500' OR id = 'd3'")
    seen.add(fingerprint())
    tbl.add(_rows([3]))
    assert fingerprint() == first
    tbl.update(where="id = 'd7'", values={"text": "changed"})
    seen.add(fingerprint())
    tbl.merge_insert("id").when_matched_update_all().execute(_rows([1], text="upserted {}"))
    seen.add(fingerprint())
    assert len(seen) == 5
    # A duplicate row counts (a sum, not XOR: two equal rows do not cancel).
    tbl.add(_rows([8]))
    assert fingerprint() not in seen


def test_lancedb_fingerprint_reads_only_what_changed(kb, spy):
    _, tbl, fingerprint = kb
    fingerprint()
    assert spy["hashed"] == [None]  # the first call hashes every row
    spy["hashed"].clear()
    first = fingerprint()
    assert spy == {"hashed": [], "addresses": []}  # unchanged: the fragment list only
    tbl.add(_rows(range(200, 210)))
    grown = fingerprint()
    assert spy["hashed"] == [[5]] and spy["addresses"] == []  # the new fragment's rows only
    tbl.delete("id = 'd45'")  # fragment 1 gets a deletion file
    spy["hashed"].clear()
    assert fingerprint() not in (first, grown)
    # Its data files are cached: its live row addresses are read, not its text.
    assert spy == {"hashed": [], "addresses": [[1]]}


def test_lancedb_fingerprint_is_the_same_without_its_cache(kb, tmp_path, spy):
    import shutil

    _, tbl, fingerprint = kb
    first = fingerprint()
    tbl.delete("id = 'd3'")
    tbl.add(_rows([3]))  # the same content, in other fragments
    assert fingerprint() == first
    cache = tmp_path / "home" / "sensor_cache"
    shutil.rmtree(cache)  # lost
    assert fingerprint() == first
    for digests in cache.glob("*/digests.json"):
        digests.write_text("{not json")  # damaged
    assert fingerprint() == first
    shutil.rmtree(cache)
    cache.write_text("a file where the folder should be")  # unwritable
    assert fingerprint() == first
    assert spy["hashed"][-1] is None  # it hashed every row to get there


def test_lancedb_fingerprint_full_read_is_the_same_value(kb, monkeypatch, spy):
    """Where pylance cannot open the table (LanceDB Cloud's tables have no ``to_lance``), every
    row is hashed by LanceDB's own query: slower, the same value."""
    import lancedb.table

    _, tbl, fingerprint = kb
    tbl.delete("id = 'd9'")
    incremental = fingerprint()

    def remote(self, **kwargs):
        raise NotImplementedError("a remote table")

    monkeypatch.setattr(lancedb.table.LanceTable, "to_lance", remote)
    spy["hashed"].clear()
    assert fingerprint() == incremental
    assert spy["hashed"] == []  # not through pylance


def test_lancedb_fingerprint_of_a_missing_table_or_column_is_none(kb, tmp_path):
    _, _, fingerprint = kb
    assert lancedb_fingerprint(str(tmp_path / "db"), "missing", ["text"]) is None
    assert lancedb_fingerprint(str(tmp_path / "db"), "kb", ["text", "body"]) is None
    assert lancedb_fingerprint(str(tmp_path / "nowhere"), "kb", ["text"]) is None


def test_an_old_cursor_moves_to_the_new_fingerprint_without_a_run(kb, tmp_path):
    """A cursor written before the incremental fingerprint holds the full-read hash: the first
    tick compares it with that hash of the table, and requests a run only for a real change."""
    _, tbl, fingerprint = kb
    columns = {"text_column": "text", "title_column": "title", "id_column": "id"}
    source = CorpusSourceResource(lancedb_uri=str(tmp_path / "db"), lancedb_table="kb", **columns)
    legacy = legacy_lancedb_fingerprint(str(tmp_path / "db"), "kb", ["text", "title", "id"])
    old_cursor = json.dumps({"fingerprint": legacy, "changes": 4})
    upgraded, cursor = _tick(source, old_cursor)
    assert isinstance(upgraded, dg.SkipReason), upgraded
    assert json.loads(cursor) == {"fingerprint": fingerprint(), "changes": 4}
    assert isinstance(_tick(source, cursor)[0], dg.SkipReason)
    # The table changed while the old code ran: that is a change.
    tbl.add(_rows([900]))
    changed, cursor = _tick(source, old_cursor)
    assert isinstance(changed, dg.RunRequest)
    assert json.loads(cursor) == {"fingerprint": fingerprint(), "changes": 5}
