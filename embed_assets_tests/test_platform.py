"""The platform past one machine, run for real on loopback.

A throw-away PostgreSQL 15 server holds the Dagster instance of ``deploy/dagster.yaml``; the
Docker entrypoint runs the webserver and the daemon on it. Through them: the run queue keeps one
run per artifact home at a time, the sensor's tick requests a run that the daemon launches and
completes, the same pipeline with every step in its own process (``EMBED_ASSETS_EXECUTOR=
multiprocess``) gives the same data and metrics, and ``embed-assets audit`` verifies both runs
from PostgreSQL.

Skipped only where no PostgreSQL server is installed and ``CI`` is unset; in CI it always runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from embed_assets.defs.definitions import all_assets
from embed_assets.defs.resources import HOME_POOL
from embed_assets_tests.postgres_server import INSTALL_HINT, PostgresServer, postgres_server, server_bin_dir
from embed_assets_tests.process_groups import ENTRYPOINT, free_port, graphql, start_group, stop_group
from embed_assets_tests.test_pipeline_e2e import MINI_CORPUS, tiny_run_config

REPO = Path(__file__).resolve().parents[1]
LOCATION = "embed_assets.defs.definitions"  # workspace.yaml's python_module
DATA_VERSION_TAG = "dagster/data_version"  # where Dagster records an asset's data version
IN_PROGRESS = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}

pytestmark = pytest.mark.skipif(
    server_bin_dir() is None and not os.environ.get("CI"), reason=f"{INSTALL_HINT}; runs in CI"
)


@dataclass
class Deployment:
    url: str
    instance: dg.DagsterInstance
    env: dict[str, str]
    root: Path
    server: PostgresServer
    log: Path


def _wait(predicate, timeout_s: float, what: str, interval_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s"
        time.sleep(interval_s)
    return value


def _answers(url: str) -> bool:
    try:
        return "data" in graphql(url, "{ version }")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    """``scripts/docker-entrypoint.sh`` with DAGSTER_PG_* set and an empty DAGSTER_HOME: the webserver
    and the daemon on PostgreSQL; the sensor watches the mini corpus with the tiny recipe."""
    root = tmp_path_factory.mktemp("deployment")
    (root / "dagster").mkdir()
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_run_config()), encoding="utf-8")
    port = free_port()
    with postgres_server() as server, pytest.MonkeyPatch.context() as mp:
        env = {
            **os.environ,
            **server.dagster_env(),
            "DAGSTER_HOME": str(root / "dagster"),
            "DAGSTER_YAML_TEMPLATE": str(REPO / "deploy" / "dagster.yaml"),
            "WORKSPACE": str(REPO / "workspace.yaml"),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "EMBED_ASSETS_HOME": str(root / "home"),
            "EMBED_ASSETS_CORPUS_DIR": str(MINI_CORPUS),
            "EMBED_ASSETS_RECIPE": str(recipe),
            "HF_HUB_OFFLINE": "1",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        for key, value in server.dagster_env().items():  # this process opens the same instance
            mp.setenv(key, value)
        log = root / "entrypoint.log"
        with log.open("w") as out:
            proc = start_group(["sh", str(ENTRYPOINT)], env, out)
        url = f"http://127.0.0.1:{port}/graphql"
        instance = None
        try:
            _wait(lambda: _answers(url) or proc.poll() is not None, 240, "the webserver answers")
            assert proc.poll() is None, log.read_text()
            instance = dg.DagsterInstance.from_config(str(root / "dagster"))
            yield Deployment(url, instance, env, root, server, log)
        finally:
            stop_group(proc)
            if instance is not None:
                instance.dispose()


def _launch(deployment: Deployment, assets: list[str], run_config: dict) -> str:
    """A run of ``assets`` as the UI launches it (GraphQL launchRun); returns its run id."""
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": "__repository__",
        "pipelineName": "__ASSET_JOB",
        "assetSelection": [{"path": [a]} for a in assets],
    }
    query = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
      __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
    answer = graphql(deployment.url, query, {"params": {"selector": selector, "runConfigData": run_config}})
    launched = answer["data"]["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", answer
    return launched["run"]["runId"]


def _status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def _data_versions(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Each asset the run materialized, with the data version it recorded."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    out = {}
    for record in records:
        materialization = record.event_log_entry.dagster_event.step_materialization_data.materialization
        out[materialization.asset_key.to_user_string()] = materialization.tags.get(DATA_VERSION_TAG)
    return out


def test_the_instance_is_postgres_with_a_queue_and_a_pool_per_home(deployment):
    instance = deployment.instance
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    pools = instance.get_concurrency_config().pool_config
    assert (pools.pool_granularity.value, pools.default_pool_limit) == ("run", 1)
    limits = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
    assert limits == {HOME_POOL: 1}  # set by the entrypoint before the first run is queued
    for asset in all_assets:
        assert asset.op.pool == HOME_POOL, asset.key.to_user_string()
    # The password reaches the instance from the environment only.
    assert deployment.server.password not in (deployment.root / "dagster" / "dagster.yaml").read_text()


def test_the_queue_runs_one_run_per_home_at_a_time(deployment):
    instance = deployment.instance
    ops = {"source_documents": {"config": {"corpus_dir": str(MINI_CORPUS)}}}
    runs = [_launch(deployment, ["source_documents", "document_chunks"], {"ops": ops}) for _ in range(2)]
    both_in_progress = False
    seen_waiting = False
    deadline = time.monotonic() + 300
    while True:
        statuses = [_status(instance, r) for r in runs]
        both_in_progress |= all(s in IN_PROGRESS for s in statuses)
        seen_waiting |= any(s in IN_PROGRESS for s in statuses) and dg.DagsterRunStatus.QUEUED in statuses
        if all(s in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE) for s in statuses):
            break
        assert time.monotonic() < deadline, f"runs {runs} did not finish: {statuses}"
        time.sleep(0.2)
    assert statuses == [dg.DagsterRunStatus.SUCCESS] * 2, deployment.log.read_text()[-3000:]
    assert not both_in_progress and seen_waiting  # the second run waited in the queue for the first
    first, second = sorted((instance.get_run_record_by_id(r) for r in runs), key=lambda r: r.start_time)
    assert first.end_time <= second.start_time


@pytest.fixture(scope="module")
def sensor_run(deployment) -> str:
    """The sensor switched on as in the UI; its first tick requests a run, which the daemon launches
    (in one process: the default executor) and completes. Returns that run's id."""
    query = """mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
      __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }"""
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": "__repository__",
        "sensorName": "corpus_change_sensor",
    }
    answer = graphql(deployment.url, query, {"selector": selector})
    assert answer["data"]["startSensor"]["sensorState"]["status"] == "RUNNING", answer
    instance = deployment.instance

    def requested() -> str | None:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"embed_assets/trigger": "corpus_change"}))
        return runs[0].run_id if runs else None

    run_id = _wait(requested, 180, "the sensor's first tick requests a run")
    done = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    _wait(lambda: _status(instance, run_id) in done, 1500, f"the sensor's run {run_id} ends", 3.0)
    assert _status(instance, run_id) == dg.DagsterRunStatus.SUCCESS, deployment.log.read_text()[-3000:]
    return run_id


def test_a_sensor_tick_requests_a_run_the_daemon_completes(deployment, sensor_run):
    versions = _data_versions(deployment.instance, sensor_run)
    assert {"source_documents", "finetuned_model", "retrieval_eval", "onnx_model"} <= set(versions)


@pytest.fixture(scope="module")
def multiprocess_run(deployment, sensor_run) -> str:
    """The sensor run's config, run with every step in its own process (``dagster job execute``,
    the way a deployment's run worker executes a run) on the same instance, in another home."""
    config = deployment.root / "sensor_run.yaml"
    config.write_text(
        yaml.safe_dump(deployment.instance.get_run_by_id(sensor_run).run_config), encoding="utf-8"
    )
    env = {
        **deployment.env,
        "EMBED_ASSETS_EXECUTOR": "multiprocess",
        "EMBED_ASSETS_HOME": str(deployment.root / "home_multiprocess"),
    }
    command = ["dagster", "job", "execute", "-m", LOCATION, "-j", "embed_assets_pipeline", "-c", str(config)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = deployment.instance.get_runs(filters=dg.RunsFilter(job_name="embed_assets_pipeline"))
    run = next(r for r in runs if r.run_id != sensor_run)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    return run.run_id


def test_steps_in_their_own_processes_give_the_same_data_and_metrics(
    deployment, sensor_run, multiprocess_run
):
    instance = deployment.instance
    starts = instance.get_records_for_run(multiprocess_run, of_type=dg.DagsterEventType.STEP_START).records
    pids = {r.event_log_entry.dagster_event.pid for r in starts}
    assert len(starts) >= 12 and len(pids) == len(starts)  # a process per step
    assert _data_versions(instance, multiprocess_run) == _data_versions(instance, sensor_run)


def test_audit_verifies_both_runs_from_postgres(deployment, sensor_run, multiprocess_run):
    for run_id in (sensor_run, multiprocess_run):
        done = subprocess.run(
            [sys.executable, "-m", "embed_assets", "audit", run_id, "--json"],
            env=deployment.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert json.loads(done.stdout)["ok"] is True
        assert deployment.server.password not in done.stdout + done.stderr
    assert deployment.server.password not in deployment.log.read_text()
