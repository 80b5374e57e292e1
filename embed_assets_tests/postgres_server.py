"""A throw-away PostgreSQL server on loopback for the platform tests.

Debian's ``postgresql`` package provides the binaries (``initdb``, ``pg_ctl``, ``postgres``,
under ``/usr/lib/postgresql/<version>/bin``). ``initdb`` refuses to run as root, so under root
(CI) the cluster belongs to the ``postgres`` system user and its commands run through
``runuser``. The server listens on a free loopback port, authenticates with a password
(scram-sha-256, so the tests pass one the way a deployment does) and is removed on exit.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from embed_assets_tests.process_groups import free_port

INSTALL_HINT = "no PostgreSQL server binaries (Debian: apt-get install postgresql)"


def server_bin_dir() -> Path | None:
    """The folder with ``initdb``, ``pg_ctl`` and ``postgres``, or None when none is installed."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    username: str
    password: str
    db_name: str

    def dagster_env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables ``deploy/dagster.yaml`` reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.username,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db_name,
        }


@contextlib.contextmanager
def postgres_server(db_name: str = "dagster") -> Iterator[PostgresServer]:
    """Start a fresh cluster, create ``db_name`` owned by a password user, yield it, remove it."""
    bin_dir = server_bin_dir()
    if bin_dir is None:
        raise RuntimeError(INSTALL_HINT)
    as_root = os.geteuid() == 0
    # A folder of its own under the temp root: pytest's tmp_path is private to root, which the
    # postgres user could not enter.
    root = Path(tempfile.mkdtemp(prefix="embed-assets-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    username, password = "embed_assets", secrets.token_urlsafe(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if as_root:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        shutil.chown(pwfile, "postgres")

    def run(*cmd: str) -> None:
        full = ["runuser", "-u", "postgres", "--", *cmd] if as_root else list(cmd)
        subprocess.run(full, check=True, capture_output=True, text=True, cwd=root)

    port = free_port()
    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            username,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-sync",
        )
        options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off"
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "server.log"),
            "-w",
            "start",
        )
        try:
            env = {**os.environ, "PGPASSWORD": password}
            subprocess.run(
                [
                    "psql",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    username,
                    "-d",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    f"CREATE DATABASE {db_name}",
                ],
                check=True,
                capture_output=True,
                env=env,
            )
            yield PostgresServer("127.0.0.1", port, username, password, db_name)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
