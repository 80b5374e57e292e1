"""Wall time and peak memory of the default pipeline run (`embed-assets run`), per asset.

Runs the CLI in a subprocess with a fresh artifact folder and Dagster home, samples the
resident memory of the whole process tree every 0.5 s, and writes a Markdown report to
``benchmarks/results/default-run.md``.

    python benchmarks/bench_default_run.py [-- extra embed-assets run args]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def matmul_gflops(size: int = 1024, repeats: int = 50) -> float:
    """fp32 matrix-multiply throughput on this machine's cores (torch's default threads): a
    reference for comparing wall times measured on different machines or days."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "default-run.md"))
    parser.add_argument(
        "--keep", default=None, help="run in this folder and keep its assets (default: a temp folder)"
    )
    parser.add_argument("extra", nargs="*", help="extra arguments for `embed-assets run`")
    args = parser.parse_args(argv)

    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "EMBED_ASSETS_HOME": str(home), "DAGSTER_HOME": str(Path(tmp) / "dagster")}
        cmd = [sys.executable, "-m", "embed_assets", "run", "--home", str(home), *args.extra]
        gflops, load_before = matmul_gflops(), os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        ps = psutil.Process(proc.pid)
        peak = 0
        output: list[str] = []
        import threading

        reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
        reader.start()
        while proc.poll() is None:
            peak = max(peak, tree_rss(ps))
            time.sleep(0.5)
        reader.join()
        wall = time.perf_counter() - start
        summary_path = home / "last_run.json"
        if proc.returncode != 0 or not summary_path.exists():
            print("".join(output[-80:]))
            print(f"run failed with exit code {proc.returncode}", file=sys.stderr)
            return 1
        summary = json.loads(summary_path.read_text())
        latest = home / "assets" / "training_recipe" / "latest.json"
        recipe = json.loads((latest.parent / json.loads(latest.read_text())["file"]).read_text())

    lines = [
        "# Default run: wall time and memory",
        "",
        f"Command: `{' '.join(['python benchmarks/bench_default_run.py', *args.extra])}`"
        + " (runs `embed-assets run`)",
        "",
        f"Machine: {platform.machine()}, {psutil.cpu_count()} CPU cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM. Total wall time **{wall / 60:.1f} min**, "
        f"peak RSS of the process tree **{peak / 2**30:.2f} GiB**. Machine speed before the run: "
        f"{gflops:.0f} GFLOP/s fp32 matmul (1024x1024, torch, all cores); load average {load_before:.2f}.",
        "",
        "| asset | wall time (s) | process peak RSS so far (MB) |",
        "| --- | --- | --- |",
    ]
    for name, stage in summary["stages"].items():
        lines.append(f"| `{name}` | {stage.get('wall_seconds', '')} | {stage.get('peak_rss_mb', '')} |")
    lines += [
        "",
        f"Evaluation on {summary['test_queries']} held-out synthetic test queries:",
        "",
        summary["markdown"],
        "",
        "By question generator (nDCG@10):",
        "",
        "| generator | test questions | base | fine-tuned | delta (points) |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {g} | {m['queries']} | {m['base']:.4f} | {m['fine_tuned']:.4f} | {m['delta_points']:+.2f} |"
            for g, m in summary.get("synthetic_by_generator", {}).items()
        ),
        "",
        f"Recipe: asked {recipe['requested']}, chose **{recipe['chosen']}** ({recipe['selected_on']}); "
        "validation nDCG@10 "
        + ", ".join(f"{c['preset']} {c['val_ndcg10']}" for c in recipe["candidates"])
        + (f", base {recipe['candidates'][0]['base_val_ndcg10']}" if recipe["candidates"] else "")
        + ".",
        "",
    ]
    report = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
