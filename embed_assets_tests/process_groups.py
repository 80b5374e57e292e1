"""Long-running servers the tests start (the Docker entrypoint, ``dagster dev``): each in a process
group of its own, stopped as a whole by its group id, never by a broad ``pkill``."""

from __future__ import annotations

import os
import signal
import subprocess
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
