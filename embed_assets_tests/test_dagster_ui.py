"""The Docker entrypoint, run for real on loopback: the Dagster webserver serves this workspace,
lists every asset with its lineage and checks, and the daemon (sensors) runs beside it.

This is what a user sees in the UI (and what the image runs): GraphQL over real HTTP
against ``dagster-webserver -w workspace.yaml``, started by ``scripts/docker-entrypoint.sh``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from embed_assets_tests.process_groups import ENTRYPOINT, free_port, graphql, start_group, stop_group

REPO = Path(__file__).resolve().parents[1]

LINEAGE = {
    "source_documents": set(),
    "document_chunks": {"source_documents"},
    "base_chunk_index": {"document_chunks"},
    "synthetic_qa": {"document_chunks"},
    "qa_quality_scores": {"synthetic_qa", "document_chunks", "base_chunk_index"},
    "qa_splits": {"qa_quality_scores", "document_chunks"},
    "mined_negatives": {"qa_splits", "base_chunk_index"},
    "teacher_labels": {"mined_negatives", "qa_splits", "document_chunks"},
    "training_recipe": {
        "base_chunk_index",
        "mined_negatives",
        "teacher_labels",
        "qa_splits",
        "document_chunks",
        "source_documents",
    },
    "training_examples": {
        "training_recipe",
        "mined_negatives",
        "teacher_labels",
        "document_chunks",
        "qa_splits",
    },
    "finetuned_model": {"training_recipe", "training_examples", "qa_splits"},
    "retrieval_eval": {
        "finetuned_model",
        "qa_splits",
        "base_chunk_index",
        "source_documents",
        "document_chunks",
    },
    "onnx_model": {"finetuned_model", "retrieval_eval", "document_chunks"},
}
CHECKS = {
    "no_document_leakage": "qa_splits",
    "enough_examples_for_batch": "training_examples",
    "no_regression_vs_base": "retrieval_eval",
    "general_domain_forgetting": "retrieval_eval",
    "onnx_parity": "onnx_model",
    "int8_retrieval_drift": "onnx_model",
}
QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    description
    dependencyKeys { path }
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
  }
  repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name } jobs { name } } } }
}
"""


def _entrypoint_env(tmp_path: Path, *path_first: Path, **extra: str) -> dict[str, str]:
    """The entrypoint's environment over an empty Dagster instance at ``tmp_path/dagster``; the
    virtualenv's commands on PATH, after ``path_first``."""
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("", encoding="utf-8")
    path = [*map(str, path_first), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    return {
        **os.environ,
        "WORKSPACE": str(REPO / "workspace.yaml"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "PATH": os.pathsep.join(path),
        **extra,
    }


@pytest.fixture
def entrypoint(tmp_path):
    """``scripts/docker-entrypoint.sh`` on a free loopback port; yields (url, process)."""
    port = free_port()
    env = _entrypoint_env(
        tmp_path,
        HOST="127.0.0.1",
        PORT=str(port),
        EMBED_ASSETS_HOME=str(tmp_path / "home"),
        HF_HUB_OFFLINE="1",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    log = (tmp_path / "entrypoint.log").open("w")
    proc = start_group(["sh", str(ENTRYPOINT)], env, log)
    try:
        yield f"http://127.0.0.1:{port}/graphql", proc
    finally:
        stop_group(proc, timeout_s=20)
        log.close()


def _wait_for_assets(url: str, proc: subprocess.Popen, timeout_s: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the entrypoint exited early"
        try:
            data = graphql(url, QUERY)
            if data.get("data", {}).get("assetNodes"):
                return data["data"]
            last_error = data
        except urllib.error.HTTPError as exc:  # a served but rejected query: fail with its message
            raise AssertionError(exc.read().decode()[:500]) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last_error = exc
        time.sleep(2)
    raise AssertionError(f"webserver never served the assets: {last_error!r}")


def test_ui_lists_every_asset_with_lineage_and_checks_and_the_daemon_runs(entrypoint, tmp_path):
    url, proc = entrypoint
    data = _wait_for_assets(url, proc)
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert set(nodes) == set(LINEAGE)
    for name, upstream in LINEAGE.items():
        node = nodes[name]
        assert {"/".join(k["path"]) for k in node["dependencyKeys"]} == upstream, name
        assert node["description"], f"{name} has no description in the UI"
        assert node["groupName"] and node["groupName"] != "default", name
    checks = {
        c["name"]: (name, c["blocking"])
        for name, n in nodes.items()
        for c in (n["assetChecksOrError"] or {}).get("checks", [])
    }
    assert {k: v[0] for k, v in checks.items()} == CHECKS
    assert checks["no_regression_vs_base"][1] is True  # a regressed model is never exported
    assert checks["general_domain_forgetting"][1] is False  # forgetting warns, it does not block export
    repos = data["repositoriesOrError"]["nodes"]
    assert "corpus_change_sensor" in {s["name"] for r in repos for s in r["sensors"]}
    assert "embed_assets_pipeline" in {j["name"] for r in repos for j in r["jobs"]}
    children = {" ".join(p.cmdline()) for p in psutil.Process(proc.pid).children(recursive=True)}
    assert any("dagster-daemon" in c for c in children), children
    # Both processes opened the fresh instance without each stamping its schema (one alembic head).
    assert len(_alembic_versions(tmp_path / "dagster" / "schedules" / "schedules.db")) == 1


def _alembic_versions(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:  # sqlite3's own context manager does not close
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


def test_the_entrypoint_creates_the_instance_before_starting_the_daemon_and_webserver(tmp_path):
    """Started together on an empty DAGSTER_HOME, the daemon and the webserver both create the SQLite
    storage, and can leave two alembic heads that neither can open again (dagster-io/dagster#27390;
    seen here once when CI shared the cores). The entrypoint creates it first, with the real
    ``dagster instance migrate``; stand-ins for the two long-running processes record whether the
    storage was there when they started, and then exit, which ends the entrypoint."""
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    for name in ("dagster-daemon", "dagster-webserver"):
        script = stand_ins / name
        script.write_text(
            "#!/bin/sh\n"
            f'test -f "$DAGSTER_HOME/schedules/schedules.db" && echo ready > "{tmp_path}/{name}.seen"\n'
        )
        script.chmod(0o755)
    done = subprocess.run(
        ["sh", str(REPO / "scripts" / "docker-entrypoint.sh")],
        env=_entrypoint_env(tmp_path, stand_ins),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # it exits when either process ends, for the restart policy
    for name in ("dagster-daemon", "dagster-webserver"):
        assert (tmp_path / f"{name}.seen").is_file(), f"{name} started before the instance storage existed"
    assert len(_alembic_versions(tmp_path / "dagster" / "schedules" / "schedules.db")) == 1
