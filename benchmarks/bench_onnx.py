"""Throughput and fidelity of PyTorch (sentence-transformers) vs ONNX fp32 vs ONNX int8.

Encodes N synthetic texts of varied length (deterministic, seeded) with each backend and prints
a Markdown table of texts/s and cosine to the PyTorch embeddings, plus the command line used.

    HF_HUB_OFFLINE=1 python benchmarks/bench_onnx.py --n 256

Output: the table on stdout (benchmarks/README.md, 'ONNX speed and fidelity', quotes it).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Run as a plain script from a checkout: make the repository's package importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

SENTENCES = [
    "PostgreSQL uses work_mem for each sort or hash operation in a query plan.",
    "Autovacuum removes dead tuples and keeps the visibility map current.",
    "A checkpoint flushes dirty pages from shared buffers to the data files.",
    "Logical replication publishes row changes from selected tables.",
    "The planner estimates row counts from statistics gathered by ANALYZE.",
    "Connection poolers such as PgBouncer reduce the cost of many short sessions.",
    "B-tree indexes support equality and range queries on sortable types.",
    "Write-ahead logging makes committed transactions durable after a crash.",
    "Partitioned tables route rows to child tables by a partition key.",
    "Long-running transactions hold back the xmin horizon and cause bloat.",
]


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic texts from 1 word up to ~300 tokens (the longest get truncated).

    Args:
        n: number of texts.
        seed: random seed.
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.2:  # short identifier-style queries
            texts.append(
                rng.choice(["work_mem", "shared_buffers", "max_wal_size", "pg_stat_activity", "VACUUM FULL"])
            )
        elif kind < 0.9:  # passages of 1 to 8 sentences
            texts.append(" ".join(rng.choices(SENTENCES, k=rng.randint(1, 8))))
        else:  # long passages, beyond max_seq_length
            texts.append(" ".join(rng.choices(SENTENCES, k=rng.randint(18, 24))))
    return texts


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """Run ``fn`` once; return its output and wall time in seconds."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the Markdown table.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="number of texts to encode (default 256)")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="batch size for every backend (default 32)"
    )
    parser.add_argument(
        "--model", default="all-MiniLM-L6-v2", help="sentence-transformers model folder or alias"
    )
    parser.add_argument(
        "--onnx-dir", type=Path, default=None, help="export folder (default: a temporary folder)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per backend, interleaved; the best is reported"
    )
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from embed_assets.export import export_onnx
    from embed_assets.models import resolve_model_path
    from embed_assets.serving.runtime import OnnxEmbedder

    texts = make_texts(args.n)
    model_path = resolve_model_path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = args.onnx_dir or Path(tmp) / "onnx"
        start = time.perf_counter()
        export = export_onnx(model_path, onnx_dir, quantize_int8=True)
        export_s = time.perf_counter() - start

        from sentence_transformers import SentenceTransformer

        st_model = SentenceTransformer(model_path, device="cpu")
        fp32 = OnnxEmbedder(onnx_dir)
        int8 = OnnxEmbedder(onnx_dir, int8=True)
        backends: list[tuple[str, Callable[[], np.ndarray]]] = [
            (
                "PyTorch (sentence-transformers)",
                lambda: st_model.encode(
                    texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False
                ),
            ),
            ("ONNX fp32 (onnxruntime)", lambda: fp32.encode(texts, batch_size=args.batch_size)),
            ("ONNX int8 (onnxruntime, dynamic)", lambda: int8.encode(texts, batch_size=args.batch_size)),
        ]
        # Warm up every backend (first calls allocate arenas and pick kernels), then time them
        # interleaved and keep each one's best run: other processes on a shared machine then
        # disturb all backends alike instead of whichever happened to run at a busy moment.
        outputs: dict[str, np.ndarray] = {}
        best: dict[str, float] = {}
        with torch.inference_mode():
            for _name, fn in backends:
                fn()
            for _ in range(args.repeats):
                for name, fn in backends:
                    emb, seconds = timed(fn)
                    outputs[name] = np.asarray(emb, dtype=np.float32)
                    best[name] = min(best.get(name, float("inf")), seconds)
        reference = outputs[backends[0][0]]
        rows = []
        for name, _ in backends:
            cos = cosines(outputs[name], reference)
            rows.append((name, args.n / best[name], best[name], float(cos.min()), float(cos.mean())))

    print(f"Command: `{' '.join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`")
    print()
    print(
        f"Model `{args.model}` "
        f"(dim {export.embedding_dim}, max_seq_length {export.max_seq_length}); "
        f"{args.n} texts, batch size {args.batch_size}, best of {args.repeats}; "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}. "
        f"Export took {export_s:.1f} s; model.onnx {export.model_bytes / 1e6:.1f} MB, "
        f"model_int8.onnx {export.int8_model_bytes / 1e6:.1f} MB."
    )
    print()
    print("| Backend | texts/s | seconds | speed-up | min cosine vs PyTorch | mean cosine vs PyTorch |")
    print("|---|---:|---:|---:|---:|---:|")
    base_rate = rows[0][1]
    for name, rate, seconds, cmin, cmean in rows:
        print(f"| {name} | {rate:.1f} | {seconds:.2f} | {rate / base_rate:.2f}x | {cmin:.4f} | {cmean:.4f} |")


if __name__ == "__main__":
    main()
