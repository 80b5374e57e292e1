"""A durable cache of LLM responses in SQLite.

Why SQLite: one file, atomic commits, readable while written, no server. WAL mode lets
readers run during writes, and every response is committed on its own as soon as it
arrives, so a run that is killed (SIGKILL, OOM, a cancelled Dagster step) loses only the
calls that were in flight. Re-running then replays finished calls from the cache and
only pays for the rest.

The key (:func:`cache_key`) is a stable hash of everything that determines a response:
the content hashes of the chunk(s), the prompt's name and version, the model, the sampling
parameters (temperature, max_tokens, seed, response format) and the exact messages sent.
Nothing secret is stored: rows hold the key, the response text and lineage fields only.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from embed_assets.hashing import stable_hash

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key        TEXT PRIMARY KEY,
    prompt     TEXT NOT NULL,
    model      TEXT NOT NULL,
    chunk_ids  TEXT NOT NULL,
    content    TEXT,
    usage      TEXT,
    created_at REAL NOT NULL
)
"""


def cache_key(
    *,
    chunk_hashes: Iterable[str],
    prompt: str,
    model: str,
    params: Mapping[str, Any],
    messages: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Stable hash identifying one LLM request.

    Args:
        chunk_hashes: content hashes of the chunk(s) in the prompt (order matters: hop order).
        prompt: the prompt's ``name@vN`` (see :class:`~embed_assets.llm.prompts.Prompt`).
        model: the model string as sent to litellm (``openai/gpt-4o-mini``).
        params: sampling parameters that change the output: temperature, max_tokens, seed,
            response format. Never include credentials or endpoints here.
        messages: the exact messages sent (hashed), so any change to the prompt text or to
            values rendered into it gives a new key. Defaults to None (not part of the key).
        extra: anything else that distinguishes requests (e.g. the parse-retry attempt).
    """
    return stable_hash(
        {
            "chunks": list(chunk_hashes),
            "prompt": prompt,
            "model": model,
            "params": dict(params),
            "messages": stable_hash(messages, length=32) if messages is not None else None,
            "extra": dict(extra or {}),
        },
        length=32,
    )


class ResponseCache:
    """SQLite-backed response cache, safe to share between threads and asyncio tasks.

    Args:
        path: the database file; parent folders are created. ``":memory:"`` gives a
            throwaway cache (useful for benchmarks).

    One connection is shared under a lock: every statement is a sub-millisecond
    primary-key lookup or single-row insert, so contention is negligible and calling it
    from the event loop thread does not stall other requests noticeably.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit; each put is its own transaction, durable on return.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (not a power cut), without an fsync per row.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)

    def get(self, key: str) -> str | None:
        """The cached response text for ``key``, or None when absent."""
        with self._lock:
            row = self._conn.execute("SELECT content FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def put(
        self,
        key: str,
        content: str,
        *,
        prompt: str = "",
        model: str = "",
        chunk_ids: Iterable[str] = (),
        usage: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one response and commit it immediately.

        Args:
            key: from :func:`cache_key`.
            content: the response text exactly as returned (even when it later fails to
                parse, so a re-run replays the same reply and stays deterministic).
            prompt, model, chunk_ids, usage: lineage for inspection; not part of the key.
        """
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, prompt, model, chunk_ids, content, usage, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    prompt,
                    model,
                    json.dumps(list(chunk_ids)),
                    content,
                    json.dumps(dict(usage)) if usage else None,
                    time.time(),
                ),
            )

    def count(self, prompt: str | None = None) -> int:
        """Number of cached responses, optionally only those of one ``name@vN`` prompt."""
        with self._lock:
            if prompt is None:
                return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            return self._conn.execute(
                "SELECT COUNT(*) FROM responses WHERE prompt = ?", (prompt,)
            ).fetchone()[0]

    def close(self) -> None:
        """Close the connection (checkpoints the WAL into the main file)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
