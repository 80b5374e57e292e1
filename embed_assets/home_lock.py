"""One run at a time per artifact home, however many processes the run uses.

Two runs writing one home at once corrupt it: LanceDB tables replaced under a reader, two
trainings writing one checkpoint folder, and every LLM call paid twice. A run therefore claims
its home before it works, in every process that works for it (one under the in-process executor,
one per step under the multiprocess or Kubernetes executor):

- ``<home>/.lock.json`` names the run that holds the home (run id, pid, host, start time).
- ``<home>/.lock`` is held by every process working for that run, with a *shared* ``flock``,
  so steps of one run share the home while another run's process is refused. The kernel drops a
  process's lock when it dies, even by SIGKILL, so a killed run never blocks its home.
- ``<home>/.lock.guard`` (``filelock``) serialises the short read-check-write of the two above.

A process claims a free home by taking ``.lock`` exclusively (nobody else works in it), writing
its run into ``.lock.json`` and downgrading to shared. The last process of a run to release
deletes ``.lock.json``; finding it at claim time with nobody holding ``.lock`` means that run
did not end cleanly (killed, machine lost), which the caller reports, since Dagster still
lists that run as STARTED.

This is a lock on one filesystem: across hosts, one run per home is the run queue's job
(``deploy/dagster.yaml``: the ``embed_assets_home`` pool at run granularity); this lock then
catches a run launched past the queue (``embed-assets run``, ``dagster asset materialize``).
Between two steps of a multiprocess run no process holds the home, so such a run can take it
then; the first run's next step is then refused before it writes anything.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.json"
GUARD_FILE = ".lock.guard"
_POLL_S = 0.5  # how often a waiting run looks again


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


def run_process_id() -> int:
    """The pid that lives as long as the run: this process, or, in a step process that Dagster's
    multiprocess executor started (``multiprocessing``), the run's process that started it."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else os.getpid()


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


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def busy_holder(home: str | Path) -> Holder | None:
    """Who holds ``home`` now (a best-effort :class:`Holder`, with run id ``?`` when its
    record is unreadable), or None when it is free."""
    path = Path(home) / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        if _try_flock(fd, fcntl.LOCK_EX):
            return None  # nobody works in it (closing the descriptor drops the lock)
        return read_holder(home) or Holder("?", 0, "?", 0.0)
    finally:
        os.close(fd)


class HomeLock:
    """A run's claim on an artifact home, shared by the run's processes and refused to other runs.

    Args:
        home: the artifact folder (created if missing).
        run_id: the run claiming it; processes with the same run id share the home.
        timeout_s: seconds to wait for a home another run holds; 0 (default) fails at once.

    After :meth:`acquire`, ``stale`` is the holder of a previous run that never released
    (its processes died), or None.
    """

    def __init__(self, home: str | Path, run_id: str, timeout_s: float = 0.0):
        self.home = Path(home)
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.stale: Holder | None = None
        self._fd: int | None = None

    def acquire(self) -> HomeLock:
        self.home.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout_s
        while not self._try_claim():
            if time.monotonic() >= deadline:
                holder = read_holder(self.home)
                who = holder.describe() if holder else "another run"
                waited = f" after waiting {self.timeout_s:g} s" if self.timeout_s > 0 else ""
                raise HomeBusyError(
                    f"artifact home {self.home.resolve()} is in use by {who}{waited}; one run at a time per "
                    "home: wait for it, or give this run another home (--home / $EMBED_ASSETS_HOME)"
                )
            time.sleep(_POLL_S)
        return self

    def _try_claim(self) -> bool:
        with FileLock(str(self.home / GUARD_FILE)):
            fd = os.open(self.home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            holder = read_holder(self.home)
            if holder is not None and holder.run_id == self.run_id and _try_flock(fd, fcntl.LOCK_SH):
                self._fd = fd  # another process of this run holds it: share
                return True
            if not _try_flock(fd, fcntl.LOCK_EX):  # a process of another run works in it
                os.close(fd)
                return False
            # Nobody works in the home: a record left here is from a run that never released it.
            self.stale = holder if holder is not None and holder.run_id != self.run_id else None
            record = Holder(self.run_id, run_process_id(), socket.gethostname(), time.time())
            tmp = self.home / (HOLDER_FILE + ".tmp")
            tmp.write_text(json.dumps(asdict(record)))
            tmp.replace(self.home / HOLDER_FILE)
            fcntl.flock(fd, fcntl.LOCK_SH)  # downgrade, so that the run's other processes can share
            self._fd = fd
            return True

    def release(self) -> None:
        if self._fd is None:
            return
        with FileLock(str(self.home / GUARD_FILE)):
            if _try_flock(self._fd, fcntl.LOCK_EX):  # the run's last process here: the home is free
                (self.home / HOLDER_FILE).unlink(missing_ok=True)
            os.close(self._fd)  # drops this process's lock
            self._fd = None

    def __enter__(self) -> HomeLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
