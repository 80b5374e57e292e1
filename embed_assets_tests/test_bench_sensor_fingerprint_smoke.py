"""Smoke test of ``benchmarks/bench_sensor_fingerprint.py`` on a tiny table: every scenario runs,
the incremental ticks agree with the cold ones, and a warm tick hashes only the upserted rows."""

from __future__ import annotations

import json

from embed_assets_tests.benchmark_scripts import load_benchmark


def test_bench_sensor_fingerprint_writes_every_scenario(tmp_path):
    bench = load_benchmark("bench_sensor_fingerprint")
    out = tmp_path / "sensor-fingerprint.json"
    argv = ["--rows", "2000", "--batch", "500", "--repeats", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["table"]["fragments"] == 4 and result["table"]["rows_upserted"] == 20
    scenarios = result["scenarios"]
    assert set(scenarios) == {"unchanged", "upsert 1%", "compacted"}
    assert scenarios["unchanged"]["new_warm"]["rows_hashed"] == 0
    assert scenarios["upsert 1%"]["new_warm"]["rows_hashed"] == 20  # the new fragment only
    assert scenarios["upsert 1%"]["new_cold"]["rows_hashed"] == 2000
    for runs in scenarios.values():
        assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in runs.values())
