"""Smoke test of ``benchmarks/bench_encode_batch.py``, the measurement behind ENCODE_BATCH_SIZE:
it runs as a user runs it, on a few chunks of the embedded corpus, and writes its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_encode_batch_writes_a_row_per_batch_size(tmp_path):
    out = tmp_path / "encode-batch.md"
    cmd = [sys.executable, "benchmarks/bench_encode_batch.py", "--chunks", "12", "--rounds", "1"]
    done = subprocess.run(
        [*cmd, "--batch-sizes", "4", "12", "--out", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text()
    assert "12 chunks of the embedded corpus" in table
    rows = [line for line in table.splitlines() if line.startswith(("| 4 |", "| 12 |"))]
    assert len(rows) == 2
    for row in rows:
        seconds = float(row.split("|")[2])
        assert seconds > 0
