"""Bad input to ``embed-assets run`` is one clear line and exit code 2; a failed step says why;
one run at a time per artifact home, however the run was launched; killed runs are found and
marked failed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from embed_assets.cli import main
from embed_assets.defs.definitions import all_assets, build_resources
from embed_assets.home_lock import HOLDER_FILE, HomeBusyError, HomeLock, busy_holder, read_holder

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("ops: [unclosed", "not valid YAML at line 1, column 15: expected ',' or ']'"),
        ("- ops\n- more\n", "must be a mapping like 'ops: {<asset>: {config: ...}}', got a list"),
        ("just a string\n", "got a string"),
        ("ops: 5\n", "ops: must be a mapping of asset name to {config: {...}}, got 5 (int)"),
        ("ops: {qa_splits: {config: {seed: 1, sead: 2}}}\n", "ops.qa_splits.config.sead: unknown field"),
        ("opz: {}\n", "run config.opz: unknown field; did you mean 'ops'?"),
        (
            "resources: {recipe: {config: {preset: wiki}}}\n",
            "resources.recipe.config.preset: Input should be 'auto'",
        ),
    ],
)
def test_a_bad_config_file_is_one_message_and_exit_2(tmp_path, dagster_home, capsys, content, expected):
    config = tmp_path / "run.yaml"
    config.write_text(content)
    code, err = _run(["run", "--config", str(config), "--home", str(tmp_path / "h")], capsys)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "h").exists()  # nothing ran


def test_a_missing_or_binary_config_file_is_named(tmp_path, dagster_home, capsys):
    code, err = _run(["run", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and f"--config {tmp_path / 'nope.yaml'}: no such file" in err
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"ops: \xff\xfe\n")
    code, err = _run(["run", "--config", str(binary)], capsys)
    assert code == 2 and "not UTF-8 text" in err and "Traceback" not in err


def test_every_invalid_field_in_one_message(tmp_path, dagster_home, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        "ops:\n"
        "  qa_quality_scores: {config: {dedup_cosine: 1.5}}\n"
        "  finetuned_model: {config: {matryoshka_dims: [512, 128], learning_rate: 2}}\n"
        "  document_chunks: {config: {chunk_tokenz: 64}}\n"
    )
    code, err = _run(["run", "--config", str(config), "--home", str(tmp_path / "h")], capsys)
    assert code == 2
    for expected in (
        "ops.qa_quality_scores.config.dedup_cosine",
        # a config in the old layout is read into training_recipe's settings, and named there
        "ops.training_recipe.config.finetuned_model.matryoshka_dims: [512] exceed the base model's "
        "embedding size 384",
        "ops.training_recipe.config.finetuned_model.learning_rate: Input should be less than 1",
        "ops.document_chunks.config.chunk_tokenz: unknown field; did you mean 'chunk_tokens'?",
    ):
        assert expected in err, err


def test_a_failed_step_says_why(tmp_path, dagster_home, capsys):
    empty = tmp_path / "empty_corpus"
    empty.mkdir()
    code, err = _run(["run", "--corpus-dir", str(empty), "--home", str(tmp_path / "h")], capsys)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last == f"step source_documents failed: CorpusError: corpus_dir is empty: {empty}", err


def test_a_busy_home_fails_at_once_naming_the_holder(tmp_path, dagster_home, capsys):
    home = tmp_path / "h"
    with HomeLock(home, "run-that-holds-it"):
        assert busy_holder(home).run_id == "run-that-holds-it"
        code, err = _run(["run", "--home", str(home)], capsys)
        assert code == 2
        assert "is in use by run run-that-holds-it" in err and f"pid {os.getpid()}" in err
    assert busy_holder(home) is None and read_holder(home) is None  # released cleanly


def test_a_runs_processes_share_its_home_and_other_runs_wait_for_the_last(tmp_path):
    """Each step process of a multiprocess run claims the home for the same run: they share it,
    another run is refused until the last of them releases, and that one frees the home."""
    home = tmp_path / "h"
    first_step, second_step = HomeLock(home, "run-a").acquire(), HomeLock(home, "run-a").acquire()
    with pytest.raises(HomeBusyError, match="in use by run run-a"):
        HomeLock(home, "run-b").acquire()
    first_step.release()
    assert busy_holder(home).run_id == "run-a"  # the second step still works in it
    with pytest.raises(HomeBusyError, match="in use by run run-a"):
        HomeLock(home, "run-b").acquire()
    second_step.release()
    assert busy_holder(home) is None and read_holder(home) is None
    with HomeLock(home, "run-b") as claim:
        assert claim.stale is None and read_holder(home).run_id == "run-b"


def test_a_claim_left_by_a_killed_run_is_reported_and_taken_over(tmp_path):
    home = tmp_path / "h"
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_claim_and_die, args=(str(home),))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL and read_holder(home).run_id == "killed-run"
    assert busy_holder(home) is None  # the kernel dropped the dead process's lock
    with HomeLock(home, "next-run") as claim:
        assert claim.stale is not None and claim.stale.run_id == "killed-run"


def _claim_and_die(home: str) -> None:
    HomeLock(home, "killed-run").acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def _launch(home: Path, run_config: dict, selection: str | None = None, resources: dict | None = None):
    """A run as the UI or the sensor launches it: Dagster and the resources, no CLI."""
    return dg.materialize(
        all_assets,
        selection=selection,
        run_config=run_config,
        resources=resources or build_resources(str(home)),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _failed_with(result, text: str) -> bool:
    """The run failed before any asset materialized, with ``text`` in its error."""
    errors = [str(e.event_specific_data.error) for e in result.all_events if e.is_failure]
    return (
        not result.success
        and not result.get_asset_materialization_events()
        and any(text in e for e in errors)
    )


def test_runs_launched_by_dagster_obey_the_lock_and_validate_before_any_work(tmp_path, mini_corpus_dir):
    """What the UI and the sensor launch goes through the same store setup as the CLI."""
    home = tmp_path / "h"
    ops = {"source_documents": {"config": {"corpus_dir": str(mini_corpus_dir)}}}
    with HomeLock(home, "cli-run"):
        assert _failed_with(_launch(home, {"ops": ops}, "source_documents"), "is in use by run cli-run")
        with pytest.raises(HomeBusyError):
            HomeLock(home, "another").acquire()
    # Ranges are enforced by pydantic only when an asset builds its config; the run's start checks every
    # asset's. ("Materialize all": the whole graph, whose last assets would meet the bad field minutes later.)
    bad = {"ops": {**ops, "qa_quality_scores": {"config": {"dedup_cosine": 1.5}}}}
    assert _failed_with(_launch(home, bad), "ops.qa_quality_scores.config.dedup_cosine")
    # And a good run takes and releases the lock.
    assert _launch(home, {"ops": ops}, "source_documents").success and busy_holder(home) is None


def test_the_home_claim_is_the_stores_and_every_asset_requires_it(tmp_path, mini_corpus_dir):
    """The claim (run-config check, lock) does not hide in the IO manager: swapping that keeps
    both, and Definitions without the store fail to load, naming it."""
    for asset in all_assets:
        assert "store" in asset.required_resource_keys, asset.key.to_user_string()
    home = tmp_path / "h"
    swapped = {
        **build_resources(str(home)),
        "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "fs")),
    }
    ops = {"source_documents": {"config": {"corpus_dir": str(mini_corpus_dir)}}}
    with HomeLock(home, "cli-run"):
        assert _failed_with(
            _launch(home, {"ops": ops}, "source_documents", swapped), "is in use by run cli-run"
        )
    bad = {"ops": {**ops, "qa_quality_scores": {"config": {"dedup_cosine": 1.5}}}}
    assert _failed_with(_launch(home, bad, None, swapped), "ops.qa_quality_scores.config.dedup_cosine")
    assert _launch(home, {"ops": ops}, "source_documents", swapped).success and busy_holder(home) is None
    without_store = {k: v for k, v in build_resources(str(home)).items() if k != "store"}
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="'store'"):
        dg.Definitions(assets=all_assets, resources=without_store).resolve_implicit_global_asset_job_def()


def test_a_killed_run_is_reported_and_cleaned(tmp_path, dagster_home, mini_corpus_dir, capsys):
    home = tmp_path / "h"
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embed_assets",
            "run",
            "--corpus-dir",
            str(mini_corpus_dir),
            "--home",
            str(home),
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not (home / HOLDER_FILE).exists():  # the run has claimed its home
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run did not start within 180 s"
            time.sleep(0.2)
        holder = read_holder(home)
        time.sleep(1.0)  # let it record its tags in the instance
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    instance = dg.DagsterInstance.get()
    assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.STARTED  # Dagster can't tell

    # The next run on that home says so (a quick one: only the first asset).
    code = main(
        ["run", "--corpus-dir", str(mini_corpus_dir), "--home", str(home), "--select", "source_documents"]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert f"run {holder.run_id}" in err and "still marked STARTED" in err and "clean-runs" in err

    assert main(["clean-runs", "--dry-run"]) == 0
    assert f"would mark failed: run {holder.run_id}" in capsys.readouterr().out
    assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.STARTED
    assert main(["clean-runs"]) == 0
    assert "1 killed run(s) marked failed" in capsys.readouterr().out
    assert dg.DagsterInstance.get().get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.FAILURE
    assert main(["clean-runs"]) == 0
    assert "0 killed run(s)" in capsys.readouterr().out


def test_an_unreachable_postgres_instance_is_named_without_its_password(tmp_path, monkeypatch, capsys):
    """deploy/dagster.yaml with nothing listening at DAGSTER_PG_HOST:DAGSTER_PG_PORT."""
    (tmp_path / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"DAGSTER_HOME": str(tmp_path), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port)}
    env |= {"DAGSTER_PG_USERNAME": "u", "DAGSTER_PG_PASSWORD": "s3cret-pw", "DAGSTER_PG_DB": "d"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, err = _run(["audit"], capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert f"cannot reach its PostgreSQL database at DAGSTER_PG_HOST=127.0.0.1 DAGSTER_PG_PORT={port}" in last
    assert "s3cret-pw" not in err
