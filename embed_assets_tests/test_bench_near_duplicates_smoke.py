"""Smoke test of ``benchmarks/bench_near_duplicates.py``, the measurement behind
EXACT_DEDUP_MAX_ROWS: it runs as a user runs it, on the mini corpus' questions at two small
scales, and writes its record and table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_near_duplicates_runs_both_paths_at_each_scale(tmp_path):
    out = tmp_path / "near-duplicates"
    cmd = [
        sys.executable,
        "benchmarks/bench_near_duplicates.py",
        "--corpus",
        "embed_assets_tests/fixtures/mini_corpus",
    ]
    # 2x is above --exact-full-max: its exact time is extrapolated from the last block.
    args = ["--scales", "1", "2", "--exact-full-max", "200", "--exact-blocks", "1", "--audit", "50"]
    done = subprocess.run([*cmd, *args, "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = json.loads(out.with_suffix(".json").read_text())["scales"]
    assert one["approximate"]["duplicates"] > 0  # the mini corpus' questions hold duplicates
    assert one["agreement"] == {"same_mask": True, "duplicate_recall": 1.0, "false_duplicates": 0}
    assert two["exact"]["extrapolated_from_blocks"] == f"1 of {-(-two['rows'] // 512)}"
    assert "agreement" not in two
    for row in (one, two):
        assert row["approximate"]["kept_rows_with_a_kept_duplicate"] == 0
        assert row["exact"]["peak_rss_mb"] >= row["exact"]["rss_before_mb"]
    table = out.with_suffix(".md").read_text()
    assert "| 1x |" in table and "| 2x |" in table
