"""BM25 at scale: writing chunk text with its LanceDB full-text index, and the quality stage's
lexical round trip (queries/s), at 3.6k, 36k and 360k chunks.

The 3.6k tier is NFCorpus' real documents; the larger tiers repeat them with a unique token
appended to each copy, so the vocabulary and posting lists grow as a real corpus' would (only
roughly: real corpora have more distinct words). Each tier runs in a fresh process, so its peak
RSS is its own. Vectors are 8-dimensional placeholders (BM25 never reads them) and no ANN index
is built: the tier measures the text path alone.

    python benchmarks/bench_lexical_scale.py [--sizes 3633 36330 363300] [--queries 500]

Output: a Markdown table in ``benchmarks/results/lexical-scale.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
NFCORPUS = ROOT.parent / "shared" / "benchmarks" / "nfcorpus" / "corpus.jsonl"
DIM = 8


def tier(size: int, queries: int) -> dict:
    """Write ``size`` chunks with text and a BM25 index, then rank ``queries`` questions."""
    from bench_mining_scale import PeakRSS

    from embed_assets.index.chunk_index import write_chunk_index
    from embed_assets.index.lexical import lexical_ranks

    docs = pl.read_ndjson(NFCORPUS)
    texts = (docs["title"] + ". " + docs["text"]).to_list()
    ids = docs["_id"].to_list()

    def batches(step: int = 8192):
        for start in range(0, size, step):
            n = min(step, size - start)
            rows = [start + i for i in range(n)]
            chunk_ids = [ids[r] if r < len(ids) else f"syn{r}" for r in rows]
            text = [texts[r % len(texts)] + (f" syn{r}" if r >= len(ids) else "") for r in rows]
            frame = pl.DataFrame(
                {"chunk_id": chunk_ids, "doc_id": chunk_ids, "chunk_index": [0] * n, "text": text}
            )
            yield frame, np.zeros((n, DIM), dtype=np.float32)

    sample = docs.sample(min(queries, docs.height), seed=0)
    # A question = a real document's title (as the structure generator writes); its document is the positive.
    questions = sample["title"].to_list()
    positives = [[c] for c in sample["_id"]]
    with tempfile.TemporaryDirectory() as tmp:
        with PeakRSS() as write_mem:
            t0 = time.perf_counter()
            index = write_chunk_index(batches(), DIM, tmp, ann_threshold=size + 1)
            write_s = time.perf_counter() - t0
        with PeakRSS() as search_mem:
            t0 = time.perf_counter()
            ranks = lexical_ranks(questions, positives, index, k=10)
            search_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2**20
    return {
        "chunks": size,
        "write_and_index_s": round(write_s, 1),
        "write_growth_mb": round((write_mem.peak - write_mem.start) / 2**20),
        "queries": len(questions),
        "queries_per_s": round(len(questions) / search_s, 1),
        "search_growth_mb": round((search_mem.peak - search_mem.start) / 2**20),
        # Meaningful at the real tier only: the larger ones hold copies of each positive's text.
        "positive_in_top10": round(sum(r is not None for r in ranks) / len(ranks), 3),
        "table_on_disk_mb": round(size_mb),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[3633, 36330, 363300])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--tier", type=int, help=argparse.SUPPRESS)  # internal: run one tier, print JSON
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lexical-scale.md"))
    args = parser.parse_args(argv)
    if args.tier:
        print(json.dumps(tier(args.tier, args.queries)))
        return 0
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--tier", str(size), "--queries", str(args.queries)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(rows[-1], flush=True)
    head = list(rows[0])
    lines = [
        "# BM25 at scale: chunk text + LanceDB full-text index, and the lexical round trip",
        "",
        f"Command: `python benchmarks/bench_lexical_scale.py {' '.join(argv or sys.argv[1:])}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores. Each tier in a fresh process; growth = "
        "peak RSS above the RSS on entry to the step.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" for _ in head) + " |",
        *("| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows),
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
