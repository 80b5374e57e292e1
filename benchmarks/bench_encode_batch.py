"""Corpus encoding time by encoder batch size and runtime, on the product's own chunks.

Every corpus encoding in the pipeline (the chunk index, the evaluation, validation scoring)
goes through :func:`embed_assets.models.encode`; sentence-transformers sorts each call's texts
by length, so a smaller batch pads less while a larger one amortises per-batch overhead. This
measures which wins on this machine, on the embedded default corpus chunked as the product
chunks it, with the base model. With ``--onnx`` the same chunks are also encoded with
onnxruntime (the fused fp32 graph that ``export_onnx`` writes and the server runs), at the
same batch sizes. Every (runtime, batch size) is interleaved over rounds so that a drift in
machine speed hits them alike; the table reports each one's median.

    python benchmarks/bench_encode_batch.py --chunks 768 --rounds 2 --batch-sizes 8 16 32 64 --onnx
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_default_run import matmul_gflops  # noqa: E402  (the default run's speed probe)

from embed_assets.export.onnx_export import export_onnx  # noqa: E402
from embed_assets.ingest.chunking import chunk_documents  # noqa: E402
from embed_assets.ingest.documents import read_corpus  # noqa: E402
from embed_assets.models import ENCODE_BATCH_SIZE, encode, load_model, resolve_model_path  # noqa: E402
from embed_assets.serving.runtime import OnnxEmbedder  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    # The ONNX export (about 90 MB) is scratch: it goes when the measurement ends, even on failure.
    with tempfile.TemporaryDirectory(prefix="bench-encode-onnx-") as scratch:
        return _measure(argv, Path(scratch))


def _measure(argv: list[str] | None, scratch: Path) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(REPO / "data" / "corpus"))
    p.add_argument("--chunks", type=int, default=768, help="the first N chunks of the corpus")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--onnx", action="store_true", help="also time onnxruntime on the exported model")
    p.add_argument("--out", default=None, help="write the markdown table here")
    args = p.parse_args(argv)

    model = load_model("all-MiniLM-L6-v2")
    chunks = chunk_documents(read_corpus(args.corpus).documents, model.tokenizer)
    texts = chunks["text"].to_list()[: args.chunks]
    tokens = [len(ids) for ids in model.tokenizer(texts)["input_ids"]]
    runtimes = {"torch": lambda batch, bs: encode(model, batch, batch_size=bs)}
    if args.onnx:
        export_onnx(resolve_model_path("all-MiniLM-L6-v2"), scratch)
        onnx = OnnxEmbedder(scratch)
        runtimes["onnxruntime"] = lambda batch, bs: onnx.encode(batch, batch_size=bs)
    for run in runtimes.values():
        run(texts[:32], 16)  # warm-up: first-call allocations are not a batch size's cost
    speed_before = matmul_gflops()
    seconds: dict[tuple[str, int], list[float]] = {(r, bs): [] for r in runtimes for bs in args.batch_sizes}
    drift: dict[tuple[str, int], float] = {}
    reference = None
    for _ in range(args.rounds):
        for runtime, bs in seconds:
            start = time.perf_counter()
            vectors = runtimes[runtime](texts, bs)
            seconds[runtime, bs].append(time.perf_counter() - start)
            reference = vectors if reference is None else reference
            # Padding and kernels change float rounding only: the vectors agree to a few digits.
            drift[runtime, bs] = float(np.abs(vectors - reference).max())
            assert drift[runtime, bs] < 1e-4, f"{runtime} batch {bs}: vectors differ by {drift[runtime, bs]}"
    speed_after = matmul_gflops()

    slowest = max(statistics.median(s) for s in seconds.values())
    lines = [
        "# Corpus encoding time by runtime and batch size",
        "",
        f"Command: `python benchmarks/bench_encode_batch.py --chunks {args.chunks} --rounds {args.rounds} "
        f"--batch-sizes {' '.join(map(str, args.batch_sizes))}{' --onnx' if args.onnx else ''}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; fp32 matmul {speed_before:.0f} GFLOP/s before, "
        f"{speed_after:.0f} after. {len(texts)} chunks of the embedded corpus "
        f"(mean {statistics.mean(tokens):.0f} tokens, max {max(tokens)}), base model all-MiniLM-L6-v2. "
        f"The product's default is {ENCODE_BATCH_SIZE}.",
        "",
        "| runtime | batch size | median seconds | chunks/s | vs slowest | every round (s) | max abs diff vs first |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (runtime, bs), runs in seconds.items():
        med = statistics.median(runs)
        lines.append(
            f"| {runtime} | {bs} | {med:.2f} | {len(texts) / med:.1f} | {slowest / med:.2f}x | "
            f"{', '.join(f'{s:.2f}' for s in runs)} | {drift[runtime, bs]:.1e} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return {key: statistics.median(runs) for key, runs in seconds.items()}


if __name__ == "__main__":
    main()
