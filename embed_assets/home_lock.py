"""One run at a time per artifact home.

Two runs writing one home at once corrupt it: LanceDB tables replaced under a reader, two
trainings writing one checkpoint folder, and every LLM call paid twice. A run therefore holds
an exclusive lock on ``<home>/.lock`` from start to end (``filelock``: an OS-level ``flock``,
so the lock is released by the kernel when its process dies, even by SIGKILL).

Beside the lock, ``<home>/.lock.json`` names the holder (run id, pid, host, start time).
A clean release deletes it; finding it at acquire time means the previous run did not end
cleanly (killed, machine lost), which the caller reports, since Dagster still lists that run
as STARTED.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.json"


class HomeBusyError(RuntimeError):
    """Another run holds the home."""


@dataclass(frozen=True)
class Holder:
    run_id: str
    pid: int
    host: str
    started: float  # unix time

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"run {self.run_id} (pid {self.pid} on {self.host}, since {since})"


def read_holder(home: str | Path) -> Holder | None:
    """The holder recorded in ``<home>/.lock.json``, or None (no file, or unreadable)."""
    try:
        return Holder(**json.loads((Path(home) / HOLDER_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def busy_holder(home: str | Path) -> Holder | None:
    """Who holds ``home`` now (a best-effort :class:`Holder`, with run id ``?`` when its
    record is unreadable), or None when it is free. Takes and drops the lock at once."""
    path = Path(home) / LOCK_FILE
    if not path.exists():
        return None
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return read_holder(home) or Holder("?", 0, "?", 0.0)
    lock.release()
    return None


class HomeLock:
    """An exclusive, process-wide claim on an artifact home.

    Args:
        home: the artifact folder (created if missing).
        run_id: recorded as the holder, so a waiting run can say whom it waits for.
        timeout_s: seconds to wait for a busy home; 0 (default) fails at once.

    After :meth:`acquire`, ``stale`` is the holder of a previous run that never released
    (its process died), or None.
    """

    def __init__(self, home: str | Path, run_id: str, timeout_s: float = 0.0):
        self.home = Path(home)
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.stale: Holder | None = None
        self._lock: FileLock | None = None

    def acquire(self) -> HomeLock:
        self.home.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.home / LOCK_FILE), timeout=self.timeout_s)
        try:
            lock.acquire()
        except Timeout:
            holder = read_holder(self.home)
            who = holder.describe() if holder else "another run"
            waited = f" after waiting {self.timeout_s:g} s" if self.timeout_s > 0 else ""
            raise HomeBusyError(
                f"artifact home {self.home.resolve()} is in use by {who}{waited}; one run at a time per "
                "home: wait for it, or give this run another home (--home / $EMBED_ASSETS_HOME)"
            ) from None
        self._lock = lock
        self.stale = read_holder(self.home)
        holder = Holder(self.run_id, os.getpid(), socket.gethostname(), time.time())
        tmp = self.home / (HOLDER_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(holder)))
        tmp.replace(self.home / HOLDER_FILE)
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        (self.home / HOLDER_FILE).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    def __enter__(self) -> HomeLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
