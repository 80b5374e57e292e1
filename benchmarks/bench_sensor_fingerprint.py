"""The retrain sensor's tick on a production-sized LanceDB table: the full-read fingerprint it had
against the incremental one (``embed_assets/defs/lancedb_fingerprint.py``), seconds and peak RSS.

The table: ``--rows`` rows (id, title, text of ~200 characters), written as appends of
``--batch`` rows (one fragment each, as LanceDB writes them). Scenarios, in this order:

1. ``unchanged``: the full read; the incremental one cold (empty cache) and warm (its cache).
2. ``upsert 1%``: ``merge_insert`` of ``--changed`` (1%) rows spread over the table with new text
   (LanceDB writes a new fragment and a deletion file in nearly every old one); the full read,
   the incremental one warm (the cache of step 1) and cold.
3. ``compacted``: ``table.optimize()`` rewrites every fragment; the incremental one warm, which
   must give the same value as before and hashes every rewritten fragment again.

Each figure comes from a fresh process (``--repeats`` of them; the median seconds and the
largest peak RSS are kept), so a tick's peak RSS is its own, imports included (lancedb, not
Dagster); its growth is how far the tick raised the process' peak above the imports' peak. Every
incremental value is checked against a cold one of the same table state.

    python benchmarks/bench_sensor_fingerprint.py [--rows 1000000] [--batch 50000] [--repeats 3]

Output: ``benchmarks/results/sensor-fingerprint.json`` (``--out``), and a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["text", "title", "id"]
WORDS = [f"w{n:04d}" for n in range(4000)]


def _rows(ids: list[int], seed: int) -> pa.Table:
    rng = random.Random(seed)
    text = [" ".join(rng.choices(WORDS, k=40))[:200] for _ in ids]
    return pa.table(
        {"id": [f"doc-{i}" for i in ids], "title": [f"Title {i % 997}" for i in ids], "text": text}
    )


def _build(uri: str, rows: int, batch: int) -> dict:
    import lancedb

    start = time.perf_counter()
    db = lancedb.connect(uri)
    tbl = db.create_table("chunks", data=_rows(list(range(min(batch, rows))), 0), mode="overwrite")
    for first in range(batch, rows, batch):
        tbl.add(_rows(list(range(first, min(first + batch, rows))), first))
    return {
        "build_s": round(time.perf_counter() - start, 1),
        "fragments": tbl.stats()["fragment_stats"]["num_fragments"],
    }


def _upsert(uri: str, rows: int, changed: int) -> None:
    import lancedb

    tbl = lancedb.connect(uri).open_table("chunks")
    ids = sorted(random.Random(7).sample(range(rows), changed))
    tbl.merge_insert("id").when_matched_update_all().execute(_rows(ids, seed=-1))


def _compact(uri: str) -> None:
    import lancedb

    lancedb.connect(uri).open_table("chunks").optimize()


def _peak_rss() -> int:
    """This process' peak RSS in bytes: VmHWM, which (unlike ru_maxrss) does not carry over the
    parent's RSS across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tick(kind: str, uri: str, cache: str) -> dict:
    """One fingerprint in this process: ``old`` (full read) or ``new`` (incremental, ``cache``)."""
    import lancedb  # noqa: F401  (imported before the clock starts, as in a sensor's process)

    if kind == "new":
        import lance  # noqa: F401  (likewise: the incremental one reads fragments with pylance)

    from embed_assets.defs import lancedb_fingerprint as lf

    work = {"fragments_hashed": 0, "rows_hashed": 0, "fragments_address_read": 0, "addresses_read": 0}
    row_hashes, live_offsets = lf.row_hashes, lf.live_offsets

    def counted_hashes(ds, columns, fragments):
        result = row_hashes(ds, columns, fragments)
        work["fragments_hashed"] += len(result)
        work["rows_hashed"] += sum(len(offsets) for offsets, _ in result.values())
        return result

    def counted_offsets(ds, fragments):
        result = live_offsets(ds, fragments)
        work["fragments_address_read"] += len(fragments)
        work["addresses_read"] += sum(len(offsets) for offsets in result.values())
        return result

    lf.row_hashes, lf.live_offsets = counted_hashes, counted_offsets
    before = _peak_rss()
    start = time.perf_counter()
    if kind == "old":
        value = lf.legacy_lancedb_fingerprint(uri, "chunks", COLUMNS)
    else:
        value = lf.lancedb_fingerprint(uri, "chunks", COLUMNS, cache_dir=cache)
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    # The process' peak before the tick (the imports) and after it: what the tick itself needed
    # shows as the difference; 0 where it stayed below the imports' peak.
    result = {"seconds": seconds, "peak_rss_mb": peak / 2**20, "growth_mb": (peak - before) / 2**20}
    return {**result, **(work if kind == "new" else {}), "fingerprint": value}


def _child(kind: str, uri: str, cache: str, repeats: int, snapshot: str | None = None) -> dict:
    """``repeats`` fresh processes; each starts from a copy of ``snapshot`` (a cache folder) if given."""
    runs = []
    for _ in range(repeats):
        if snapshot is not None:
            shutil.rmtree(cache, ignore_errors=True)
            shutil.copytree(snapshot, cache)
        cmd = [sys.executable, __file__, "--child", kind, uri, cache]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["fingerprint"] for r in runs}) == 1, runs
    row = {**runs[-1], "seconds": round(statistics.median(r["seconds"] for r in runs), 3)}
    row["seconds_all"] = [round(r["seconds"], 3) for r in runs]
    row["peak_rss_mb"] = round(max(r["peak_rss_mb"] for r in runs))
    row["growth_mb"] = round(max(r["growth_mb"] for r in runs))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=50_000, help="rows per append (one fragment each)")
    p.add_argument("--changed", type=int, help="rows upserted in step 2 (default: 1%% of --rows)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sensor-fingerprint.json"))
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # internal: one tick, print JSON
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(_tick(*a.child)))
        return 0
    changed = a.changed or max(1, a.rows // 100)
    with tempfile.TemporaryDirectory() as tmp:
        uri, cache, snapshot, cold = (str(Path(tmp) / n) for n in ("db", "cache", "snapshot", "cold"))
        table = {"rows": a.rows, "rows_per_append": a.batch, **_build(uri, a.rows, a.batch)}
        print(table, flush=True)

        def old() -> dict:
            return _child("old", uri, cold, a.repeats)

        def new(warm: bool) -> dict:
            if not warm:  # an empty cache of its own each time; the warm one stays as it is
                return _child("new", uri, cold, a.repeats, snapshot=str(Path(tmp) / "empty"))
            shutil.rmtree(snapshot, ignore_errors=True)
            shutil.copytree(cache, snapshot)  # every repeat starts from the same cache state
            return _child("new", uri, cache, a.repeats, snapshot=snapshot)

        Path(tmp, "empty").mkdir()
        _child("new", uri, cache, 1)  # fills the warm cache
        scenarios = {"unchanged": {"old": old(), "new_cold": new(False), "new_warm": new(True)}}
        upsert_start = time.perf_counter()
        _upsert(uri, a.rows, changed)
        table["upsert_s"] = round(time.perf_counter() - upsert_start, 1)
        scenarios["upsert 1%"] = {"old": old(), "new_warm": new(True), "new_cold": new(False)}
        _compact(uri)
        scenarios["compacted"] = {"new_warm": new(True), "new_cold": new(False)}
    for name, runs in scenarios.items():  # the incremental value is the cold one, state by state
        assert runs["new_warm"]["fingerprint"] == runs["new_cold"]["fingerprint"], name
    assert (
        scenarios["compacted"]["new_warm"]["fingerprint"] == scenarios["upsert 1%"]["new_cold"]["fingerprint"]
    )
    assert scenarios["upsert 1%"]["old"]["fingerprint"] != scenarios["unchanged"]["old"]["fingerprint"]
    command = " ".join(
        ["python benchmarks/bench_sensor_fingerprint.py", *(argv if argv is not None else sys.argv[1:])]
    )
    result = {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "table": {**table, "rows_upserted": changed},
        "scenarios": scenarios,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{'scenario':12} {'tick':9} {'s':>8} {'peak MB':>8} {'growth MB':>9} {'rows hashed':>11}")
    for name, runs in scenarios.items():
        for kind, r in runs.items():
            hashed = r.get("rows_hashed", "all")
            print(
                f"{name:12} {kind:9} {r['seconds']:8.3f} {r['peak_rss_mb']:8} {r['growth_mb']:9} {hashed:>11}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
