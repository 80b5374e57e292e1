"""Mining at scale: embedding chunks/s, search and mining queries/s, and memory, at 3.6k, 36k, 360k chunks.

The 3.6k tier is real text (NFCorpus documents, or the default corpus' chunks), embedded by the
real base model. The 36k and 360k tiers keep those rows and add synthetic ones: the real vectors
mixed with seeded Gaussian noise and renormalised, written in streamed batches. Embedding the
synthetic tiers is not run (it is linear in chunks: the 3.6k rate applies), which keeps the
benchmark within minutes on a CPU. Search goes through the product's LanceDB index (exact scan
below 100k rows, IVF-PQ above) and mining through ``mine_hard_negatives``.

    python benchmarks/bench_mining_scale.py [--sizes 3633 36330 363300] [--queries 500]

Output: a Markdown table in ``benchmarks/results/mining-scale.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import polars as pl
import psutil

from embed_assets.index.chunk_index import (
    ChunkIndex,
    build_chunk_index,
    read_vectors,
    search,
    write_chunk_index,
)
from embed_assets.mining.negatives import MiningConfig, mine_hard_negatives
from embed_assets.models import embedding_dim, encode, load_model

ROOT = Path(__file__).resolve().parents[1]
NFCORPUS = ROOT.parent / "shared" / "benchmarks" / "nfcorpus" / "corpus.jsonl"


class PeakRSS:
    """Samples this process's RSS every 50 ms inside the block; ``growth`` is the peak above the
    RSS on entry, i.e. what the block itself needed on top of what the process already held."""

    def __enter__(self):
        self.start = psutil.Process().memory_info().rss
        self.peak, self._stop = self.start, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def real_chunks(limit: int) -> pl.DataFrame:
    if NFCORPUS.exists():
        docs = pl.read_ndjson(NFCORPUS).head(limit)
        text = (docs["title"] + ". " + docs["text"]).to_list()
        ids = docs["_id"].to_list()
    else:
        from embed_assets.ingest.chunking import chunk_documents
        from embed_assets.ingest.documents import read_corpus

        chunks = chunk_documents(
            read_corpus(ROOT / "data" / "corpus").documents, load_model("all-MiniLM-L6-v2").tokenizer
        )
        chunks = chunks.head(limit)
        text, ids = chunks["text"].to_list(), chunks["chunk_id"].to_list()
    return pl.DataFrame({"chunk_id": ids, "doc_id": ids, "chunk_index": [0] * len(ids), "text": text})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[3633, 36330, 363300])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mining-scale.md"))
    args = parser.parse_args(argv)
    model = load_model("all-MiniLM-L6-v2")
    dim = embedding_dim(model)
    base = real_chunks(min(args.sizes))
    rng = np.random.default_rng(0)
    # Queries: each real chunk's first sentence; its chunk is the positive.
    sample = base.sample(min(args.queries, base.height), seed=0)
    queries = pl.DataFrame(
        {
            "qa_id": sample["chunk_id"],
            "question": [t.split(". ")[0][:200] for t in sample["text"]],
            "positive_chunk_ids": [[c] for c in sample["chunk_id"]],
        }
    )
    qvec = encode(model, queries["question"].to_list())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        real_uri = Path(tmp) / "real"
        with PeakRSS() as mem:
            t = time.perf_counter()
            real_index = build_chunk_index(base, model, real_uri)
            embed_seconds = time.perf_counter() - t
        real_vectors = read_vectors(real_index, base["chunk_id"].to_list())
        for n in args.sizes:
            uri = Path(tmp) / f"n{n}"

            def batches(n=n):
                yield base.drop("text"), real_vectors
                made, step = base.height, 8192
                while made < n:
                    k = min(step, n - made)
                    src = real_vectors[rng.integers(0, len(real_vectors), k)]
                    v = src + rng.normal(0, 0.05, (k, dim)).astype(np.float32)
                    v /= np.linalg.norm(v, axis=1, keepdims=True)
                    ids = [f"syn{made + i}" for i in range(k)]
                    yield pl.DataFrame({"chunk_id": ids, "doc_id": ids, "chunk_index": [0] * k}), v
                    made += k

            with PeakRSS() as write_mem:
                t = time.perf_counter()
                index = write_chunk_index(batches(), dim, uri) if n != base.height else real_index
                write_seconds = time.perf_counter() - t
            with PeakRSS() as search_mem:
                t = time.perf_counter()
                hits = sum(1 for _ in search(index, qvec, 50))
                search_seconds = time.perf_counter() - t
                t = time.perf_counter()
                mined, counts, _ = mine_hard_negatives(queries, model, index, MiningConfig())
                mine_seconds = time.perf_counter() - t
            rows.append(
                {
                    "chunks": index.count(),
                    "ann_index": ChunkIndex(index.uri, index.table).has_ann_index(),
                    "embed_chunks_per_s": round(base.height / embed_seconds, 1) if n == base.height else None,
                    "write_index_s": round(write_seconds, 1) if n != base.height else round(embed_seconds, 1),
                    "search_queries_per_s": round(hits / search_seconds, 1),
                    "mining_queries_per_s": round(mined.height / mine_seconds, 1),
                    "peak_rss_build_mb": round(
                        max(write_mem.peak, mem.peak if n == base.height else 0) / 2**20
                    ),
                    "peak_rss_search_mine_mb": round(search_mem.peak / 2**20),
                    "search_mine_growth_mb": round((search_mem.peak - search_mem.start) / 2**20),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    cols = list(rows[0])
    lines = [
        "# Mining at scale",
        "",
        "Command: `"
        + " ".join(["python benchmarks/bench_mining_scale.py", *(argv if argv is not None else sys.argv[1:])])
        + "`",
        "",
        f"{platform.machine()}, {psutil.cpu_count()} CPU cores; {args.queries} queries, top-50 search, 5 negatives per query. "
        f"Real text for the first {base.height} chunks, synthetic vectors above (embedding not re-run there).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join(" --- " for _ in cols) + "|",
        *("| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows),
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
