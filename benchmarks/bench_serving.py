"""Load benchmark of the embeddings server on loopback: req/s and p50/p99 latency per backend.

Exports all-MiniLM-L6-v2 (fp32 and int8) to a temporary folder, then for each backend starts a server
as a subprocess on a free 127.0.0.1 port and drives it with a closed-loop client (``concurrency``
connections, each sending its next request when the previous answer arrives), for every request size
(``--batches``, texts per request) and concurrency (``--concurrency``). Every cell is bounded in count
(``--max-requests``) and time (``--seconds``), so the run stops by itself; nothing leaves 127.0.0.1.

Backends, all behind the same HTTP server and micro-batcher (``embed_assets.serving``):

- ``PyTorch``: the exported model's own PyTorch modules (transformer, pooling, normalize) with torch,
  served through ``create_app(embedder=...)``;
- ``ONNX fp32`` and ``ONNX int8``: ``python -m embed_assets.serving`` (``--int8`` for the latter);
- with ``--baseline-src DIR``, also the server found in DIR (a checkout of an earlier commit, run with
  ``PYTHONPATH=DIR``), to compare against the code before micro-batching.

First the ONNX models are timed alone (no HTTP) on the same texts, one text per call and in batches of
32, for the ceiling the servers work under. Before the load cells, the ONNX fp32 server gets three large
bodies (a 50 MB string, a 4 MB text with
and without ``"truncate": "END"``): status, time, the server's RSS change, and the latency of a one-text
request sent meanwhile.

Requests ask for ``encoding_format: base64`` (what the ``openai`` client sends by default). The client
runs in this process, so it shares the machine's cores with the server, as a co-located caller would.

    HF_HUB_OFFLINE=1 python benchmarks/bench_serving.py --out benchmarks/results/serving
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
# Run as a plain script from a checkout: make the repository's package importable without installing it.
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

MODEL_NAME = "bench"
QUERIES = [
    "how do I raise work_mem for one session",
    "what does SQLSTATE 40P01 mean",
    "autovacuum is not keeping up with dead tuples",
    "difference between wal_level replica and logical",
    "statement_timeout vs idle_in_transaction_session_timeout",
    "checkpoint_timeout",
    "why does my standby lag behind the primary",
    "ALTER SYSTEM SET shared_buffers",
]
SENTENCES = [
    "PostgreSQL uses work_mem for each sort or hash operation in a query plan.",
    "Autovacuum removes dead tuples and keeps the visibility map current.",
    "A checkpoint flushes dirty pages from shared buffers to the data files.",
    "Logical replication publishes row changes from selected tables.",
    "Long-running transactions hold back the xmin horizon and cause bloat.",
]


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic mix: 60% short queries, 40% passages of 1 to 3 sentences (about 8 to 60 tokens)."""
    rng = random.Random(seed)
    return [
        rng.choice(QUERIES) if rng.random() < 0.6 else " ".join(rng.choices(SENTENCES, k=rng.randint(1, 3)))
        for _ in range(n)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TorchEmbedder:
    """The PyTorch side of the comparison: the same model's modules run by torch, fed the same token ids."""

    def __init__(self, model_dir: str, onnx_dir: Path, threads: int | None) -> None:
        import torch

        from embed_assets.export.onnx_export import _build_encoder, _load_sentence_transformer
        from embed_assets.serving.runtime import OnnxEmbedder

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        st_model = _load_sentence_transformer(model_dir)
        self.encoder, _, _, _, self.dim, self.max_seq_length = _build_encoder(st_model)
        reference = OnnxEmbedder(onnx_dir)  # only for the tokenizer, shared with the ONNX backends
        self.tokenizer = reference.tokenizer
        self.prompts, self.default_prompt_name = {}, None
        self.input_names = reference.input_names

    def embed_ids(self, ids):
        torch = self.torch
        width = max(len(row) for row in ids)
        input_ids = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.inference_mode():
            return self.encoder(input_ids, mask, torch.zeros_like(input_ids)).numpy()


def serve_torch(args: argparse.Namespace) -> None:
    """``--serve-torch`` mode: the HTTP server with the PyTorch backend (run as a subprocess)."""
    import uvicorn

    from embed_assets.serving.server import create_app

    embedder = TorchEmbedder(args.model, args.onnx_dir, args.threads)
    app = create_app(model_name=MODEL_NAME, embedder=embedder)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def start_server(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen:
    import urllib.request

    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tempfile.gettempdir()
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 180 s")


async def load(
    url: str, bodies: list[bytes], concurrency: int, max_requests: int, seconds: float, grace: float
) -> dict:
    """Closed loop: ``concurrency`` workers, each sending the next body when its answer arrives.

    New requests start for at most ``seconds`` (and ``max_requests`` in all); requests still in flight
    ``grace`` seconds after that are cancelled and counted as ``unfinished``.
    """
    import aiohttp

    latencies: list[float] = []
    errors = 0
    sent = 0
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=seconds + grace)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for body in bodies[: min(2 * concurrency, 8)]:  # warm-up, not timed
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
        start = time.perf_counter()
        stop_at = start + seconds

        async def worker() -> None:
            nonlocal sent, errors
            while sent < max_requests and time.perf_counter() < stop_at:
                body = bodies[sent % len(bodies)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=seconds + grace)
        for task in pending:  # each still waits for one answer
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - start
    lat = np.array(latencies or [float("nan")]) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "unfinished": len(pending),
        "seconds": round(elapsed, 2),
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }


def probe_limits(port: int, pid: int) -> list[dict]:
    """Large bodies against one server: status, seconds, the server's RSS change, and the latency of a
    one-text request sent while the large one is being handled."""
    import threading
    import urllib.error
    import urllib.request

    import psutil

    server = psutil.Process(pid)

    def post(raw: bytes) -> tuple[int, float]:
        t0 = time.perf_counter()
        if len(raw) > 8_000_000:
            # Announce the whole body, send its first 64 KB, read the answer: a server that waited for
            # the body would time out here; ours answers from the Content-Length alone.
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                head = f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-length: {len(raw)}\r\n\r\n"
                sock.sendall(head.encode() + raw[:65536])
                status_line = sock.recv(65536).split(b"\r\n", 1)[0].decode()
            return int(status_line.split()[1]), time.perf_counter() - t0
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/embeddings", data=raw, headers={"content-type": "application/json"}
        )
        try:
            status = urllib.request.urlopen(req, timeout=120).status
        except urllib.error.HTTPError as exc:
            status = exc.code
        return status, time.perf_counter() - t0

    words = "PostgreSQL writes dirty buffers to disk at each checkpoint. "
    probes = [
        ("50 MB string", json.dumps({"input": "x" * 50_000_000}).encode()),
        ("4 MB text, no truncation asked", json.dumps({"input": (words * 70_000)[:4_000_000]}).encode()),
        (
            "4 MB text, truncate END",
            json.dumps({"input": (words * 70_000)[:4_000_000], "truncate": "END"}).encode(),
        ),
    ]
    small = json.dumps({"input": "work_mem"}).encode()
    rows = []
    for name, raw in probes:
        rss_before = server.memory_info().rss
        big: dict = {}
        thread = threading.Thread(target=lambda raw=raw, big=big: big.update(result=post(raw)))
        thread.start()
        time.sleep(0.02)
        small_status, small_s = post(small)
        thread.join()
        status, seconds = big["result"]
        rows.append(
            {
                "probe": name,
                "status": status,
                "seconds": round(seconds, 3),
                "server_rss_change_mb": round((server.memory_info().rss - rss_before) / 1e6, 1),
                "one_text_request_meanwhile": f"{small_status} in {small_s * 1000:.0f} ms",
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def model_alone(
    onnx_dir: Path,
    texts: list[str],
    seconds: float = 3.0,
    batch_sizes: tuple[int, ...] = (1, 32),
    threads: int | None = None,
) -> list[dict]:
    """Texts/s of the ONNX models without HTTP, on the same texts, in model calls of each of
    ``batch_sizes`` texts (grouped by length as the server's batcher does; 1 = one text per call):
    the ceiling the servers work under, whatever the batcher does."""
    from embed_assets.serving.batcher import length_groups
    from embed_assets.serving.runtime import OnnxEmbedder

    rows = []
    for label, int8 in (("ONNX fp32", False), ("ONNX int8", True)):
        # As the server runs it: threads not spinning.
        embedder = OnnxEmbedder(onnx_dir, int8=int8, spin=False, intra_op_num_threads=threads)
        ids = embedder.tokenizer.encode(texts)
        embedder.embed_ids(ids[:32])  # warm-up
        row: dict = {"backend": label, "texts_per_s": {}}
        for size in batch_sizes:
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                chunk = [ids[(done + j) % len(ids)] for j in range(32)]
                for group in length_groups([len(r) for r in chunk], size):
                    embedder.embed_ids([chunk[i] for i in group])
                done += 32
            row["texts_per_s"][size] = round(done / (time.perf_counter() - start), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def alone_table(alone: list[dict]) -> list[str]:
    sizes = list(alone[0]["texts_per_s"])
    lines = [
        "| model | " + " | ".join(f"texts/s, {n} per call" for n in sizes) + " |",
        "| --- |" + " ---: |" * len(sizes),
    ]
    lines += [
        f"| {a['backend']} | " + " | ".join(str(v) for v in a["texts_per_s"].values()) + " |" for a in alone
    ]
    return lines


def check_vectors(port: int, texts: list[str], reference: np.ndarray) -> float:
    """Mean cosine between the server's vectors and the reference (fp32 ONNX in-process)."""
    import base64
    import urllib.request

    body = json.dumps({"input": texts, "encoding_format": "base64"}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/embeddings", data=body, headers={"content-type": "application/json"}
    )
    data = json.load(urllib.request.urlopen(req, timeout=60))["data"]
    got = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    return float((got * reference).sum(axis=1).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="all-MiniLM-L6-v2", help="sentence-transformers model folder or alias"
    )
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[1, 32], help="texts per request (default 1 32)"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8, 32], help="open connections (default 1 8 32)"
    )
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="timed seconds per cell, at most (default 8)"
    )
    parser.add_argument(
        "--max-requests", type=int, default=4000, help="requests per cell, at most (default 4000)"
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["pytorch", "onnx-fp32", "onnx-int8"],
        choices=["pytorch", "onnx-fp32", "onnx-int8"],
    )
    parser.add_argument(
        "--baseline-src", type=Path, default=None, help="also run the server of this checkout"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch / onnxruntime threads (default: theirs)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds a cell waits for answers after --seconds (default 30)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the whole grid this often; each cell keeps its best round"
    )
    parser.add_argument(
        "--model-alone",
        action="store_true",
        help="only time the ONNX models without HTTP, in calls of 1, 4, 8 and 32 texts (the compute ceiling)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    parser.add_argument("--serve-torch", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--onnx-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_torch:
        serve_torch(args)
        return

    import onnxruntime as ort

    from embed_assets.export import export_onnx
    from embed_assets.models import resolve_model_path
    from embed_assets.serving.runtime import OnnxEmbedder

    model_path = resolve_model_path(args.model)
    texts = make_texts(512)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp) / "onnx"
        export_onnx(model_path, onnx_dir, quantize_int8=True)
        # The baseline serves what the earlier export wrote: the unfused graph.
        unfused_dir = Path(tmp) / "onnx-unfused"
        if args.baseline_src:
            export_onnx(model_path, unfused_dir, optimize=False)
        if args.model_alone:
            write_model_alone(
                args, model_alone(onnx_dir, texts, batch_sizes=(1, 4, 8, 32), threads=args.threads)
            )
            return
        alone = model_alone(onnx_dir, texts, threads=args.threads)
        reference_embedder = OnnxEmbedder(onnx_dir)
        n_tokens = [len(ids) for ids in reference_embedder.tokenizer.encode(texts)]
        reference = reference_embedder.encode(texts[:64])
        del reference_embedder
        threads = ["--threads", str(args.threads)] if args.threads else []
        serve = [sys.executable, "-m", "embed_assets.serving", "--model-dir", str(onnx_dir)]
        serve += ["--model-name", MODEL_NAME, "--log-level", "warning", *threads]
        backends: list[tuple[str, list[str], dict[str, str]]] = []
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if args.baseline_src:
            old = [
                sys.executable,
                "-m",
                "embed_assets.serving",
                "--model-dir",
                str(onnx_dir),
                "--log-level",
                "warning",
            ]
            backends.append(
                ("ONNX fp32, before (baseline)", old, {**os.environ, "PYTHONPATH": str(args.baseline_src)})
            )
        if "pytorch" in args.backends:
            torch_cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-torch",
                "--model",
                model_path,
            ]
            # Its OpenMP threads sleep between calls, as the ONNX server's onnxruntime threads do.
            torch_env = {**env, "OMP_WAIT_POLICY": "PASSIVE"}
            backends.append(("PyTorch", torch_cmd + ["--onnx-dir", str(onnx_dir), *threads], torch_env))
        if "onnx-fp32" in args.backends:
            backends.append(("ONNX fp32", serve, env))
        if "onnx-int8" in args.backends:
            backends.append(("ONNX int8", serve + ["--int8"], env))

        # All servers up at once, then every cell runs each backend back to back: other load on the
        # machine then falls on the backends alike instead of on whichever ran at a busy moment.
        running: list[tuple[str, subprocess.Popen, int, float]] = []
        try:
            for name, cmd, cmd_env in backends:
                port = free_port()
                proc = start_server([*cmd, "--port", str(port)], port, cmd_env)
                cosine = check_vectors(port, texts[:64], reference)
                running.append((name, proc, port, cosine))
                print(f"{name}: mean cosine to fp32 ONNX {cosine:.4f}", flush=True)
            probes = []
            for name, proc, port, _ in running:
                if name == "ONNX fp32":
                    probes = probe_limits(port, proc.pid)
            best: dict[tuple[str, int, int], dict] = {}
            for _ in range(args.rounds):
                for batch in args.batches:
                    bodies = [
                        json.dumps(
                            {
                                "input": [texts[(i * batch + j) % len(texts)] for j in range(batch)],
                                "encoding_format": "base64",
                            }
                        ).encode()
                        for i in range(256)
                    ]
                    for conc in args.concurrency:
                        for name, _, port, cosine in running:
                            url = f"http://127.0.0.1:{port}/v1/embeddings"
                            cell = asyncio.run(
                                load(url, bodies, conc, args.max_requests, args.seconds, args.grace)
                            )
                            cell.update(
                                backend=name,
                                batch=batch,
                                concurrency=conc,
                                texts_per_s=round(cell["req_per_s"] * batch, 1),
                                cosine_to_fp32_onnx=round(cosine, 4),
                            )
                            print(json.dumps(cell), flush=True)
                            key = (name, batch, conc)
                            if key not in best or cell["req_per_s"] > best[key]["req_per_s"]:
                                best[key] = cell
        finally:
            for _, proc, _, _ in running:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    order = [name for name, _, _ in backends]
    results = sorted(best.values(), key=lambda r: (order.index(r["backend"]), r["batch"], r["concurrency"]))

    command = _command_line()
    setup = (
        f"Model `{args.model}`; texts: 60% short queries, 40% passages of 1–3 sentences "
        f"({min(n_tokens)}–{max(n_tokens)} tokens, mean {np.mean(n_tokens):.0f}); closed-loop aiohttp client in "
        f"the same machine; each cell starts requests for at most {args.seconds:g} s ({args.max_requests} at most) "
        f"after a warm-up and cancels answers still missing {args.grace:g} s later (unfinished); "
        f"backends run back to back per cell, best of {args.rounds} round(s); "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}; onnxruntime {ort.__version__}. "
        f"Load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, after: "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} (above 0 = other processes shared the cores)."
    )
    lines = [f"Command: `HF_HUB_OFFLINE=1 python {command}`", "", setup, ""]
    lines += [
        "| backend | texts/request | concurrency | req/s | texts/s | p50 ms | p99 ms | requests | errors "
        "| unfinished | cosine to fp32 ONNX |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['concurrency']} | {r['req_per_s']} | {r['texts_per_s']} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['requests']} | {r['errors']} | {r['unfinished']} | "
            f"{r['cosine_to_fp32_onnx']} |"
        )
    lines += [
        "",
        "The models alone (no HTTP, same texts grouped by length, onnxruntime threads not spinning, as the "
        "server runs them):",
        "",
    ]
    lines += alone_table(alone)
    if probes:
        lines += ["", "Limits, on the ONNX fp32 server (default 4 MiB body limit, 256 tokens):", ""]
        lines += ["| probe | status | seconds | server RSS change (MB) | a one-text request meanwhile |"]
        lines += ["| --- | --- | ---: | ---: | --- |"]
        for p in probes:
            lines.append(
                f"| {p['probe']} | {p['status']} | {p['seconds']} | {p['server_rss_change_mb']} | "
                f"{p['one_text_request_meanwhile']} |"
            )
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(
            json.dumps(
                {
                    "command": command,
                    "setup": setup,
                    "results": results,
                    "model_alone": alone,
                    "probes": probes,
                },
                indent=2,
            )
            + "\n"
        )


def _command_line() -> str:
    """This script's command line as run, for the report."""
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


def write_model_alone(args: argparse.Namespace, alone: list[dict]) -> None:
    import onnxruntime as ort

    command = _command_line()
    lines = [
        f"Command: `HF_HUB_OFFLINE=1 python {command}`",
        "",
        f"Model `{args.model}`, the ONNX export timed without HTTP on the load test's texts; "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}; onnxruntime {ort.__version__}; "
        f"load average after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        *alone_table(alone),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(
            json.dumps({"command": command, "model_alone": alone}, indent=2)
        )


if __name__ == "__main__":
    main()
