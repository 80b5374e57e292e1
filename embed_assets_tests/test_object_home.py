"""The artifact home on object storage (``EMBED_ASSETS_HOME=s3://bucket/prefix``), end to end
against moto's S3 server on loopback: the tiny pipeline with the local-disk end-to-end test's own
assertions (imported from ``test_pipeline_e2e``), every value, folder and cache in the bucket,
``embed-assets audit`` re-hashing the objects, ``embed-assets gc`` deleting objects, the secret
key nowhere; and the bad inputs, each a message naming the setting.

Skipped only where moto's server mode is not installed and ``CI`` is unset; in CI it always runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from embed_assets import object_home as oh
from embed_assets.defs.definitions import all_assets, build_resources
from embed_assets_tests.process_groups import free_port
from embed_assets_tests.s3_server import INSTALL_HINT, moto_installed, s3_server
from embed_assets_tests.test_pipeline_e2e import (  # noqa: F401  (the same assertions, on this module's pipeline)
    materialized,
    test_auto_recipe_is_chosen_by_validation_and_recorded,
    test_checks_pass,
    test_corpus_and_questions_are_encoded_with_onnxruntime_on_cpu,
    test_evaluation_and_model_card_record_lineage,
    test_evaluation_report_metrics_and_per_query_results,
    test_every_asset_materializes_with_metadata,
    test_onnx_export_serves_the_finetuned_model,
    test_outputs_are_consistent,
    tiny_run_config,
)

pytestmark = pytest.mark.skipif(
    not moto_installed() and not os.environ.get("CI"), reason=f"{INSTALL_HINT}; runs in CI"
)
BUCKET = "embed-assets-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto on loopback, its endpoint and fake credentials in the environment, a bucket, and a
    staging folder of the module's own."""
    saved = {k: os.environ.get(k) for k in (*oh_env_names(), oh.STAGING_ENV)}
    with s3_server() as server:
        server.create_bucket(BUCKET)
        os.environ.update(server.env())
        # The pipeline's staging folder; the sync tests set their own for the test's length.
        os.environ[oh.STAGING_ENV] = str(tmp_path_factory.mktemp("staging"))
        try:
            yield server
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def oh_env_names() -> tuple[str, ...]:
    return ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def _home(monkeypatch, name: str, tmp_path: Path) -> oh.ObjectHome:
    """``s3://<bucket>/<name>`` with a staging folder under ``tmp_path`` (a worker of its own)."""
    monkeypatch.setenv(oh.STAGING_ENV, str(tmp_path / f"staging-{name}"))
    home = oh.parse_home(f"s3://{BUCKET}/{name}")
    assert home.staging.is_dir()  # fixed now, whatever the environment says later
    return home


# --- the home's URI, sync and bad input -----------------------------------------------------------


@pytest.mark.parametrize(
    "uri, says",
    [
        ("s3://", "malformed storage URI"),
        ("s3://Bad_Bucket/x", "malformed storage URI"),
        ("s3://bucket/a/../b", "malformed storage URI"),
        ("ftp://bucket/x", "unknown storage scheme 'ftp'"),
    ],
)
def test_a_malformed_uri_names_the_setting(uri, says):
    with pytest.raises(oh.ObjectHomeError, match=says) as e:
        oh.parse_home(uri)
    assert str(e.value).startswith(f"EMBED_ASSETS_HOME (resources.store.config.root_dir)={uri}: ")


def test_parse_and_paths():
    home = oh.parse_home("s3://bucket/team/prefix/")
    assert (home.uri, home.root, home.key("a/b"), home.url("a")) == (
        "s3://bucket/team/prefix",
        "bucket/team/prefix",
        "bucket/team/prefix/a/b",
        "s3://bucket/team/prefix/a",
    )
    assert oh.is_remote("s3://b/p") and oh.is_remote("gs://b/p") and not oh.is_remote("/tmp/home")
    assert oh.local_root("/tmp/home") == Path("/tmp/home")


def test_push_pull_round_trip_and_deletions(s3, tmp_path, monkeypatch):
    home = _home(monkeypatch, "sync", tmp_path)
    (home.staging / "models" / "m").mkdir(parents=True)
    (home.staging / "models" / "m" / "weights.bin").write_bytes(b"w" * 1000)
    (home.staging / "assets" / "x").mkdir(parents=True)
    (home.staging / "assets" / "x" / "abc.json").write_text("{}")
    (home.staging / "assets" / "x" / "latest.json").write_text('{"file": "abc.json"}')
    (home.staging / ".lock").write_text("")
    pushed = oh.push(home)
    # The pointer goes last; the lock stays local.
    assert pushed == ["assets/x/abc.json", "models/m/weights.bin", "assets/x/latest.json"]
    assert oh.push(home) == []  # nothing changed since
    assert not home.fs.exists(home.key(".lock"))
    # Another worker (another staging folder) pulls what it asks for, and only that.
    other = _home(monkeypatch, "sync", tmp_path / "other")
    oh.pull(other, "models/m")
    assert (other.staging / "models" / "m" / "weights.bin").read_bytes() == b"w" * 1000
    assert not (other.staging / "assets").exists()
    # A file deleted in staging after its sync is deleted in the store by the next push.
    (home.staging / "models" / "m" / "weights.bin").unlink()
    assert oh.push(home) == ["models/m/weights.bin"]
    assert not home.fs.exists(home.key("models/m/weights.bin"))


def test_a_killed_push_is_redone_and_never_leaves_a_pointer_ahead(s3, tmp_path, monkeypatch):
    home = _home(monkeypatch, "killed", tmp_path)
    (home.staging / "assets" / "x").mkdir(parents=True)
    for name in ("a.json", "b.json"):
        (home.staging / "assets" / "x" / name).write_text(name)
    (home.staging / "assets" / "x" / "latest.json").write_text('{"file": "b.json"}')
    real = home.fs.put_file
    calls = []

    def dies_on_second(src, dst, **kw):
        calls.append(dst)
        if len(calls) == 2:
            raise ConnectionError("worker died")
        return real(src, dst, **kw)

    monkeypatch.setattr(home.fs, "put_file", dies_on_second)
    with pytest.raises(oh.ObjectHomeError, match="cannot upload assets/x/b.json"):
        oh.push(home)
    assert home.fs.exists(home.key("assets/x/a.json"))
    assert not home.fs.exists(home.key("assets/x/latest.json"))  # no pointer to a missing value
    monkeypatch.setattr(home.fs, "put_file", real)
    assert oh.push(home) == ["assets/x/b.json", "assets/x/latest.json"]  # a.json is not sent again


def test_a_local_change_is_never_overwritten_by_a_pull(s3, tmp_path, monkeypatch):
    home = _home(monkeypatch, "both", tmp_path)
    (home.staging / "llm_cache.sqlite").write_bytes(b"v1")
    oh.push(home)
    other = _home(monkeypatch, "both", tmp_path / "other")
    oh.pull(other, "llm_cache.sqlite")
    (other.staging / "llm_cache.sqlite").write_bytes(b"v2-longer")
    oh.push(other)
    oh.pull(home, "llm_cache.sqlite")  # unchanged here: takes the newer object
    assert (home.staging / "llm_cache.sqlite").read_bytes() == b"v2-longer"
    (other.staging / "llm_cache.sqlite").write_bytes(b"v3, changed here")
    oh.pull(other, "llm_cache.sqlite")
    assert (other.staging / "llm_cache.sqlite").read_bytes() == b"v3, changed here"


def test_unreachable_store_and_missing_bucket_name_the_setting(s3, tmp_path, monkeypatch):
    missing = oh.parse_home("s3://no-such-bucket/prefix")
    with pytest.raises(oh.ObjectHomeError, match="cannot write to the object store") as e:
        oh.check_access(missing)
    assert str(e.value).startswith("EMBED_ASSETS_HOME (resources.store.config.root_dir)=s3://no-such-bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(oh.ObjectHomeError, match="cannot write to the object store") as e:
        oh.check_access(oh.parse_home(f"s3://{BUCKET}/prefix"))
    assert s3.secret_key not in str(e.value)


def test_a_run_on_a_bad_home_fails_before_any_asset_naming_the_setting(s3, tmp_path):
    for uri, says in (
        ("s3://Bad_Bucket/x", "malformed storage URI"),
        ("s3://no-such-bucket/x", "cannot write"),
    ):
        result = dg.materialize(
            all_assets,
            selection=["source_documents"],
            run_config={"ops": {"source_documents": tiny_run_config()["ops"]["source_documents"]}},
            resources=build_resources(uri),
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
        assert not result.success and not result.get_asset_materialization_events()
        failure = next(e for e in result.all_events if e.is_failure)
        message = str(failure.event_specific_data.error)
        assert "EMBED_ASSETS_HOME (resources.store.config.root_dir)=" + uri in message and says in message


def test_the_cli_refuses_a_bad_home_in_one_message(s3, capsys, monkeypatch, tmp_path):
    from embed_assets import cli

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))

    for uri, says in (
        ("s3://Bad_Bucket/x", "malformed storage URI"),
        ("s3://no-such-bucket/x", "cannot write"),
    ):
        assert cli.main(["run", "--home", uri]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"EMBED_ASSETS_HOME (resources.store.config.root_dir)={uri}: ") and says in err
        assert "Traceback" not in err and len(err.splitlines()) == 1


# --- the tiny pipeline on the bucket --------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(s3, tmp_path_factory):
    """The local-disk end-to-end test's run, on ``s3://<bucket>/home`` (a Dagster home on disk, so
    that the CLI's ``audit`` and ``gc`` read the same instance). ``home`` is the staging folder,
    where the imported assertions look for files."""
    uri = f"s3://{BUCKET}/home"
    dagster_home = tmp_path_factory.mktemp("dagster_home")
    instance = dg.DagsterInstance.local_temp(str(dagster_home))
    resources = build_resources(uri)
    result = dg.materialize(all_assets, run_config=tiny_run_config(), resources=resources, instance=instance)
    return result, oh.parse_home(uri).staging, instance, resources


def test_every_value_folder_and_cache_is_in_the_bucket(pipeline, s3):
    result, staging, _, _ = pipeline
    home = oh.parse_home(f"s3://{BUCKET}/home")
    for key, mat in materialized(result).items():
        uri = mat.metadata["value_path"].value
        assert uri.startswith(home.url("assets/")), key
        assert home.fs.exists(uri.split("://", 1)[1]), key
        latest = json.loads(home.fs.cat_file(home.key(f"assets/{key}/latest.json")))
        assert uri.endswith("/" + latest["file"])
    objects = {name[len(home.key()) + 1 :] for name in home.fs.find(home.key())}
    model = Path(result.output_for_node("finetuned_model")["path"]).name
    onnx = Path(result.output_for_node("onnx_model")["path"]).name
    for folder in (f"models/{model}/", f"onnx/{onnx}/", "beir/", "encoders/", "lancedb/"):
        assert any(o.startswith(folder) for o in objects), folder
    assert any(o.startswith("lancedb/chunks_") and "/_versions/" in o for o in objects)
    assert any(o.startswith("reports/") and o.endswith(".png") for o in objects)
    assert not [o for o in objects if o.startswith("recipe_selection/prefix-")]  # deleted, like on disk
    assert not [o for o in objects if "/.lock" in "/" + o or o.endswith(".tmp")]
    # Every staging file the run kept is in the bucket, byte for byte.
    for path in staging.rglob("*"):
        rel = path.relative_to(staging).as_posix()
        if path.is_file() and not oh._LOCAL_ONLY.search(rel):
            assert home.fs.cat_file(home.key(rel)) == path.read_bytes(), rel


def test_audit_rehashes_objects_and_gc_deletes_objects(pipeline, monkeypatch, capsys):
    from embed_assets import cli

    result, staging, instance, _ = pipeline
    home = oh.parse_home(f"s3://{BUCKET}/home")
    monkeypatch.setenv("DAGSTER_HOME", instance.root_directory)
    assert cli.main(["audit"]) == 0
    out = capsys.readouterr().out
    assert "all match their recorded SHA-256" in out and f"s3://{BUCKET}/home/assets/" in out
    # gc: a stray value and a stray model folder go, what the evaluation uses stays.
    home.fs.pipe_file(home.key("assets/qa_splits/0000000000000000.parquet"), b"stray")
    home.fs.pipe_file(home.key("models/stray/weights.bin"), b"stray")
    assert cli.main(["gc", "--home", home.uri]) == 0
    out = capsys.readouterr().out
    assert f"deleted {home.url('assets/qa_splits/0000000000000000.parquet')}" in out
    assert f"deleted {home.url('models/stray')}" in out
    assert not home.fs.exists(home.key("models/stray/weights.bin"))
    assert cli.main(["audit"]) == 0
    capsys.readouterr()
    # A changed object fails the audit, though the staging copy is intact.
    value = materialized(result)["qa_splits"].metadata["value_path"].value.split("://", 1)[1]
    original = home.fs.cat_file(value)
    home.fs.pipe_file(value, original + b"tampered")
    try:
        assert cli.main(["audit"]) == 1
        assert "changed" in capsys.readouterr().out
    finally:
        home.fs.pipe_file(value, original)


def test_the_secret_key_is_nowhere(pipeline, s3):
    result, staging, instance, _ = pipeline
    secret = s3.secret_key.encode()
    home = oh.parse_home(f"s3://{BUCKET}/home")
    for name in home.fs.find(f"{BUCKET}"):
        assert secret not in home.fs.cat_file(name), name
    for root in (staging, Path(instance.root_directory)):
        for path in root.rglob("*"):
            assert not path.is_file() or secret not in path.read_bytes(), path
    for event in result.all_events:
        assert s3.secret_key not in str(event), event.event_type_value
