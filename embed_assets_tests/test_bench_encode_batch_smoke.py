"""Smoke test of ``benchmarks/bench_encode_batch.py``, the measurement behind ENCODE_BATCH_SIZE:
it runs as a user runs it, on a few chunks of the embedded corpus, and writes its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_encode_batch_writes_a_row_per_runtime_and_batch_size(tmp_path):
    out = tmp_path / "encode-batch.md"
    cmd = [sys.executable, "benchmarks/bench_encode_batch.py", "--chunks", "12", "--rounds", "1"]
    done = subprocess.run(
        [*cmd, "--batch-sizes", "4", "12", "--onnx", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text()
    assert "12 chunks of the embedded corpus" in table
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith(("| torch", "| onnx"))]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("torch", "4"),
        ("torch", "12"),
        ("onnxruntime", "4"),
        ("onnxruntime", "12"),
    ]
    for row in rows:
        assert float(row[2]) > 0  # median seconds
        assert float(row[6]) < 1e-4  # the vectors agree with the first runtime's
