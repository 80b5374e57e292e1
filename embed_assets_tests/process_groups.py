"""Long-running servers the tests start on loopback (the Docker entrypoint, ``dagster dev``,
PostgreSQL): a free port for each, each in a process group of its own, stopped as a whole by its
group id (never by a broad ``pkill``), and the GraphQL the Dagster webserver answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "scripts" / "docker-entrypoint.sh"


def start_group(command: list[str], env: dict[str, str], log: IO[str]) -> subprocess.Popen:
    """``command`` in a new process group, its output in ``log``, run from the repository root."""
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_group(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM to the process group, then SIGKILL if it is still there after ``timeout_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout_s)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(url: str, query: str, variables: dict | None = None, timeout_s: float = 60) -> dict:
    """The Dagster webserver's answer to ``query`` (POST, JSON)."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        return json.loads(resp.read())
