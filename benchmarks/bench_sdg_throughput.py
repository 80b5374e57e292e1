"""Throughput of LLM-backed synthetic data generation against a server of fixed latency.

Starts the scripted OpenAI-compatible test server (``embed_assets_tests/llm_fault_server.py``)
in its own process with a fixed service time per request and no faults, runs the real
generator (litellm, retries, rate limiter, pydantic parsing, a fresh SQLite response cache)
over N synthetic chunks at the given concurrency, and compares the achieved request rate
with the server's ideal ``concurrency / latency``. Prints a Markdown table.

    python benchmarks/bench_sdg_throughput.py --chunks 1024 --concurrency 32 --latency 0.2

Output: the table on stdout (benchmarks/README.md, 'LLM question generation throughput').

Target: >= 90% of ideal. What limits it is client CPU per request (litellm's request and
response handling is a few ms of Python per call), so results depend on free CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import psutil

from embed_assets.generation.llm_generator import LLMSettings, build_llm_generator
from embed_assets.hashing import content_hash

REPO = Path(__file__).resolve().parents[1]


def make_chunks(n: int, n_docs: int = 16) -> pl.DataFrame:
    rows = []
    for i in range(n):
        doc = f"doc{i % n_docs}"
        text = (
            f"Setting param_{i}_limit caps the size of worker pool {i}. Error code E{10000 + i} is raised "
            f"when the pool overflows; raise param_{i}_limit or lower pool_{i}_min_idle to fix it. "
            "The change takes effect after a configuration reload; no restart is needed."
        )
        rows.append(
            {
                "chunk_id": content_hash(text),
                "doc_id": content_hash(doc),
                "doc_path": f"{doc}.md",
                "chunk_index": i // n_docs,
                "title": f"Pool settings {doc}",
                "text": text,
                "n_tokens": 60,
            }
        )
    return pl.DataFrame(rows).sort("doc_path", "chunk_index")


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "embed_assets_tests" / "llm_fault_server.py"), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("URL "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, line.split()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1024, help="number of chunks (default 1024)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--latency", type=float, default=0.2, help="server seconds per request (default 0.2)")
    parser.add_argument("--questions", type=int, default=3, help="questions per chunk (default 3)")
    parser.add_argument("--multi-hop", type=int, default=0, help="multi-hop questions (default 0)")
    parser.add_argument("--no-cache", action="store_true", help="run without the SQLite response cache")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    proc, url = start_server(args.latency)
    server_cpu0 = sum(psutil.Process(proc.pid).cpu_times()[:2])
    try:
        chunks = make_chunks(args.chunks)
        with tempfile.TemporaryDirectory() as tmp:
            settings = LLMSettings(
                model="openai/bench-model",
                api_base=url,
                api_key="sk-bench",
                concurrency=args.concurrency,
                timeout_s=30,
                cache_path=None if args.no_cache else str(Path(tmp) / "bench_cache.sqlite"),
            )
            generator = build_llm_generator(settings)
            cpu0, start = time.process_time(), time.perf_counter()
            result = generator.generate(
                chunks, questions_per_chunk=args.questions, multi_hop_questions=args.multi_hop, seed=42
            )
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu0
            server_cpu = sum(psutil.Process(proc.pid).cpu_times()[:2]) - server_cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    stats = result.stats
    requests = stats.get("llm_calls", 0) + stats.get("preflight_calls", 0)
    ideal = args.concurrency / args.latency
    achieved = requests / wall
    # Lower bound on wall time even with free CPU: the preflight runs alone, and each
    # chunk's QA call waits for its artifacts call (two rounds of latency at the end).
    floor = args.latency + requests / ideal
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    print(f"`{command}`\n")
    print(
        "| chunks | requests | concurrency | latency (s) | ideal req/s | achieved req/s | % of ideal "
        "| wall (s) | client CPU ms/req | server CPU ms/req | QA pairs | dropped |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    dropped = sum(v for k, v in stats.items() if k.startswith("dropped:"))
    print(
        f"| {args.chunks} | {requests} | {args.concurrency} | {args.latency:g} | {ideal:.1f} | {achieved:.1f} "
        f"| {100 * achieved / ideal:.1f}% | {wall:.2f} | {1000 * cpu / max(requests, 1):.2f} "
        f"| {1000 * server_cpu / max(requests, 1):.2f} | {result.qa.height} | {dropped} |"
    )
    print(
        f"\nideal wall time {requests / ideal:.2f}s; with the serial preflight {floor:.2f}s "
        f"({100 * (requests / floor) / ideal:.1f}% of ideal is the best this run shape allows). "
        f"cache: {'off' if args.no_cache else 'fresh SQLite file'}; CPUs: {os.cpu_count()}; "
        f"1-min load average before the run: {load_before:.2f}"
    )


if __name__ == "__main__":
    main()
