"""Where the memory of an IVF-PQ LanceDB index goes: index build and batched ANN search.

Writes ``--rows`` uniformly random unit vectors (IVF's worst case: no clusters) through the
product's own ``write_chunk_index`` without an ANN index, then, each in a fresh process so
earlier allocations cannot hide in the figures:

- builds the IVF-PQ index at each ``--sample-rates`` (vectors sampled per partition for
  k-means and PQ training) and reports the build's peak RSS growth;
- searches ``--queries`` queries (top 50, exact re-ranking ``refine_factor`` 4) in batches of
  each ``--batch-sizes`` through ``embed_assets.index.chunk_index.search`` and reports the peak RSS
  growth and queries/s.

    python benchmarks/bench_ann_memory.py          # 363,300 rows, as the mining-scale bench's top tier

Writes ``benchmarks/results/ann-memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DIM = 384


def _peak_growth(fn) -> tuple[int, float]:
    """Run ``fn``; return (peak RSS above the RSS at the start, in MB; seconds)."""
    import psutil

    proc = psutil.Process()
    start = proc.memory_info().rss
    peak, done = [start], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    t = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t
    done.set()
    thread.join()
    return (peak[0] - start) >> 20, seconds


def _write(uri: str, rows: int) -> None:
    import numpy as np
    import polars as pl

    from embed_assets.index.chunk_index import write_chunk_index

    rng = np.random.default_rng(0)

    def batches():
        made = 0
        while made < rows:
            k = min(8192, rows - made)
            v = rng.normal(0, 1, (k, DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            ids = [f"c{made + i}" for i in range(k)]
            yield pl.DataFrame({"chunk_id": ids, "doc_id": ids, "chunk_index": [0] * k}), v
            made += k

    write_chunk_index(batches(), DIM, uri, ann_threshold=rows + 1)  # no index yet: built per sample rate


def _build(uri: str, sample_rate: int) -> dict:
    import lancedb
    import numpy as np

    tbl = lancedb.connect(uri).open_table("chunks")
    partitions = max(16, int(np.sqrt(tbl.count_rows())))  # as write_chunk_index chooses
    growth, seconds = _peak_growth(
        lambda: tbl.create_index(
            metric="dot",
            num_partitions=partitions,
            num_sub_vectors=DIM // 8,
            vector_column_name="vector",
            sample_rate=sample_rate,
            replace=True,
        )
    )
    return {"sample_rate": sample_rate, "build_growth_mb": growth, "build_s": round(seconds, 1)}


def _search(uri: str, batch_size: int, queries: int) -> dict:
    import numpy as np

    from embed_assets.index.chunk_index import ChunkIndex, search

    rng = np.random.default_rng(1)
    q = rng.normal(0, 1, (queries, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index = ChunkIndex(uri=uri)
    assert index.has_ann_index()
    hits = []
    growth, seconds = _peak_growth(
        lambda: hits.append(sum(1 for _ in search(index, q, 50, ann_batch_size=batch_size)))
    )
    return {
        "batch_size": batch_size,
        "search_growth_mb": growth,
        "queries_per_s": round(hits[0] / seconds, 1),
    }


def _child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=363_300)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--sample-rates", type=int, nargs="+", default=[256, 64])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 64, 32])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ann-memory.md"))
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # one measurement in this fresh process
        kind, uri, value = a.child[0], a.child[1], int(a.child[2])
        result = _build(uri, value) if kind == "build" else _search(uri, value, a.queries)
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "ann")
        _write(uri, a.rows)
        builds = [_child(["build", uri, str(sr)]) for sr in a.sample_rates]
        # The search index is the product's default build (the first sample rate is LanceDB's default).
        _child(["build", uri, str(a.sample_rates[0])])
        searches = [_child(["search", uri, str(bs), "--queries", str(a.queries)]) for bs in a.batch_sizes]
    command = " ".join(
        ["python benchmarks/bench_ann_memory.py", *(argv if argv is not None else sys.argv[1:])]
    )
    lines = [
        "# IVF-PQ memory: index build and batched search",
        "",
        f"Command: `{command}`",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPU cores; {a.rows} random unit vectors of {DIM} dims; "
        f"{a.queries} queries, top 50, nprobes 32, refine_factor 4. Each figure from a fresh process.",
        "",
        "| sample_rate | build peak RSS growth (MB) | build s |",
        "| --- | --- | --- |",
        *(f"| {b['sample_rate']} | {b['build_growth_mb']} | {b['build_s']} |" for b in builds),
        "",
        "| query batch | search peak RSS growth (MB) | queries/s |",
        "| --- | --- | --- |",
        *(f"| {s['batch_size']} | {s['search_growth_mb']} | {s['queries_per_s']} |" for s in searches),
        "",
    ]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
