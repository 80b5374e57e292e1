"""Content versions, file hashes and code versions: what makes "where did this number come
from" answerable, and checkable after the fact.

- :func:`frame_digest` hashes a frame's whole content (every column, every row, in order),
  so two frames that differ anywhere (a flipped ``kept`` flag, another negative) differ.
- :func:`data_version` combines that with the config that made it: the version Dagster
  records, and the name of the files and folders written for it.
- :func:`file_sha256` / :func:`artifact_hashes` hash what is on disk, so an audit can re-hash it.
- :func:`code_version` hashes the source of the modules that compute an asset, so Dagster
  marks an asset stale when its code changes; :func:`build_info` names the package version
  and git commit recorded in every materialization.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from embed_assets.hashing import stable_hash

_CHUNK = 1 << 20


def frame_digest(frame: pl.DataFrame) -> str:
    """SHA-256 (hex) of a frame's schema and every value, row by row.

    NDJSON is the serialisation: deterministic, independent of how the frame is chunked in
    memory (Parquet and IPC bytes are not), and readable if ever in doubt.
    """
    digest = hashlib.sha256(str(list(frame.schema.items())).encode())
    for start in range(0, frame.height, 50_000):  # bounded memory on large frames
        digest.update(frame.slice(start, 50_000).write_ndjson().encode("utf-8"))
    return digest.hexdigest()


def data_version(content: pl.DataFrame | Any, config: Any = None, length: int = 16) -> str:
    """The version of an asset's value: its full content and the config that made it.

    Args:
        content: a frame (hashed with :func:`frame_digest`) or any JSON-serialisable value.
        config: a pydantic model (its ``model_dump()``), a mapping, or None.
        length: hex digits kept.
    """
    body = frame_digest(content) if isinstance(content, pl.DataFrame) else content
    if hasattr(config, "model_dump"):
        config = config.model_dump()
    return stable_hash({"content": body, "config": config}, length)


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f)


def stream_sha256(f) -> str:
    """The SHA-256 of what a binary file object holds from its position on."""
    digest = hashlib.sha256()
    while block := f.read(_CHUNK):
        digest.update(block)
    return digest.hexdigest()


def tree_hashes(folder: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``, sorted."""
    root = Path(folder)
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def code_version(*modules: str, length: int = 12) -> str:
    """A hash of the source of ``modules`` (dotted names): an asset's code version.

    Give the asset's own module and the core modules that compute it: an edit to any of them
    changes the version, and Dagster then shows the asset as stale.
    """
    sources = [inspect.getsource(importlib.import_module(m)) for m in sorted(set(modules))]
    return stable_hash(sources, length)


@lru_cache(maxsize=1)
def build_info() -> dict[str, str]:
    """The package version, and the git commit (with ``-dirty`` for uncommitted changes) when
    the package runs from a git checkout; recorded in every materialization."""
    from embed_assets import __version__

    root = Path(__file__).resolve().parent.parent
    info = {"package_version": __version__, "git_commit": "unknown"}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        info["git_commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass  # an installed wheel: no checkout to ask
    return info


def artifact_hashes(*paths: str | Path) -> dict[str, str]:
    """``{absolute file path: sha256}`` for files and every file under folders: what an asset
    records as its ``artifacts`` metadata, and what ``embed-assets audit`` re-hashes."""
    out: dict[str, str] = {}
    for path in map(Path, paths):
        if path.is_dir():
            out.update({str((path / rel).resolve()): sha for rel, sha in tree_hashes(path).items()})
        elif path.is_file():
            out[str(path.resolve())] = file_sha256(path)
    return out
