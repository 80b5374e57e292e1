"""The SQLite response cache: keys, durability, threads, and a killed writer."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from embed_assets.llm.cache import ResponseCache, cache_key

BASE = {
    "chunk_hashes": ["abc123"],
    "prompt": "qa_single@v1",
    "model": "openai/test-model",
    "params": {"temperature": 0.7, "max_tokens": 256, "seed": 42},
    "messages": [{"role": "user", "content": "hello"}],
}


def test_key_is_stable_and_covers_every_component():
    assert cache_key(**BASE) == cache_key(**BASE)
    # Dict order is irrelevant; content is not.
    reordered = {**BASE, "params": {"seed": 42, "max_tokens": 256, "temperature": 0.7}}
    assert cache_key(**reordered) == cache_key(**BASE)
    variants = [
        {"chunk_hashes": ["abc124"]},
        {"chunk_hashes": ["abc123", "def456"]},
        {"prompt": "qa_single@v2"},
        {"model": "openai/other-model"},
        {"params": {**BASE["params"], "temperature": 0.0}},
        {"params": {**BASE["params"], "max_tokens": 512}},
        {"params": {**BASE["params"], "seed": 7}},
        {"messages": [{"role": "user", "content": "hello!"}]},
    ]
    keys = {cache_key(**{**BASE, **v}) for v in variants}
    assert len(keys) == len(variants)
    assert cache_key(**BASE) not in keys
    assert cache_key(**BASE, extra={"attempt": 1}) != cache_key(**BASE)


def test_put_get_count_and_reopen(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    with ResponseCache(path) as cache:
        assert cache.get("k1") is None
        cache.put("k1", '{"a": 1}', prompt="p@v1", model="m", chunk_ids=["c1"], usage={"total_tokens": 3})
        cache.put("k2", "", prompt="p@v2", model="m")  # an empty reply is a reply: cached
        assert cache.get("k1") == '{"a": 1}'
        assert cache.get("k2") == ""
        assert "k1" in cache and "nope" not in cache
        assert cache.count() == 2
        assert cache.count("p@v1") == 1
    with ResponseCache(path) as again:
        assert again.get("k1") == '{"a": 1}'
        assert again.count() == 2


def test_wal_mode(tmp_path):
    path = tmp_path / "cache.sqlite"
    ResponseCache(path).put("k", "v")
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_threads_share_one_cache(tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(50):
                cache.put(f"{t}-{i}", f"value {t} {i}")
                assert cache.get(f"{t}-{i}") == f"value {t} {i}"
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert cache.count() == 400


def test_rows_survive_sigkill(tmp_path):
    """Each put is committed on return: a writer killed right after loses nothing."""
    path = tmp_path / "cache.sqlite"
    script = textwrap.dedent(
        f"""
        import os, signal
        from embed_assets.llm.cache import ResponseCache
        cache = ResponseCache({str(path)!r})
        for i in range(5):
            cache.put(f"k{{i}}", f"v{{i}}")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with ResponseCache(path) as cache:
        assert cache.count() == 5
        assert [cache.get(f"k{i}") for i in range(5)] == [f"v{i}" for i in range(5)]


def test_memory_cache():
    cache = ResponseCache(":memory:")
    cache.put("k", "v")
    assert cache.get("k") == "v"


@pytest.mark.parametrize("bad", [None, "x"])
def test_count_unknown_prompt_is_zero(tmp_path, bad):
    cache = ResponseCache(tmp_path / "c.sqlite")
    assert cache.count(bad) == 0
