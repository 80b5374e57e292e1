"""Runs whose process was killed: Dagster keeps them STARTED forever unless told otherwise.

A run records its process id and host in its tags when it claims its artifact home
(``ArtifactStoreResource`` in ``resources.py``). A STARTED run whose process is gone from this host was killed (SIGKILL,
OOM killer, a lost terminal): :func:`orphaned_runs` finds them and :func:`mark_failed` marks
them failed, with a message saying why. Runs launched by the Dagster daemon on a run
coordinator can be left to Dagster's own run monitoring instead (README, *Killed runs*).
"""

from __future__ import annotations

import os
import socket

import dagster as dg

from embed_assets.home_lock import pid_alive, run_process_id
from embed_assets.object_home import is_remote

PID_TAG = "embed_assets/pid"
HOST_TAG = "embed_assets/host"
HOME_TAG = "embed_assets/home"


def claim_tags(home: str) -> dict[str, str]:
    """The tags a run records when it claims ``home``."""
    return {
        PID_TAG: str(run_process_id()),
        HOST_TAG: socket.gethostname(),
        HOME_TAG: home if is_remote(home) else os.path.abspath(home),
    }


def orphaned_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """STARTED runs of this host whose recorded process no longer exists."""
    host = socket.gethostname()
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    return [
        r
        for r in runs
        if r.tags.get(HOST_TAG) == host
        and r.tags.get(PID_TAG, "").isdigit()
        and not pid_alive(int(r.tags[PID_TAG]))
    ]


def describe(run: dg.DagsterRun) -> str:
    return f"run {run.run_id} (pid {run.tags.get(PID_TAG)}, home {run.tags.get(HOME_TAG)})"


def mark_failed(instance: dg.DagsterInstance, runs: list[dg.DagsterRun]) -> None:
    for run in runs:
        instance.report_run_failed(
            run, message=f"marked failed by embed-assets clean-runs: process {run.tags.get(PID_TAG)} is gone"
        )
