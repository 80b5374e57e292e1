"""A throw-away S3-compatible server on loopback for the object-store tests: moto in server mode
(``moto[server]``, the ``dev`` extra), in a process group of its own on a free port, with fake
credentials that the tests look for afterwards in every log, file and metadata entry."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from embed_assets_tests.process_groups import free_port, start_group, stop_group

INSTALL_HINT = "moto's server mode is not installed (pip install 'moto[server]', the dev extra)"


def moto_installed() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """The standard AWS variables the artifact home reads (and nothing else)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def create_bucket(self, name: str) -> None:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint,
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(name)


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1, answering once it is up; stopped (its process group) on exit."""
    if not moto_installed():
        raise RuntimeError(INSTALL_HINT)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # The secret is random and long, so that finding it anywhere means it leaked.
    server = S3Server(endpoint, "testing-" + secrets.token_hex(4), "secret-" + secrets.token_hex(16))
    with tempfile.TemporaryFile("w+") as log:
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "True"}
        proc = start_group(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env, log
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"moto server did not start: {log.read()[-2000:]}") from None
                    time.sleep(0.2)
            yield server
        finally:
            stop_group(proc)
