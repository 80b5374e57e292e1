"""What a sensor-triggered run costs after 5% new chunks, against a full run; and warm start
against training from the base on the same budget.

The product's own path throughout: `embed-assets run` in a subprocess, one artifact home and one
Dagster instance, as the sensor's runs would share them.

1. A full run on the default corpus minus a seeded ~5% of its documents (by chunk count).
2. Those documents come back (the "new chunks"), and the same command runs again: what it
   embeds and generates, and its wall time per stage, read from the run's materializations.
3. The same second run from a copy of the state after (1), with `finetuned_model.warm_start`:
   its evaluation against (2)'s, on the same test split and step budget.

    python benchmarks/bench_incremental.py          # writes benchmarks/results/incremental.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COUNTED = (
    "embeddings_computed",
    "embeddings_reused",
    "chunks_generated_for",
    "questions_reused",
    "llm_calls",
)


def run_cli(work: Path, corpus: Path, extra: list[str]) -> dict:
    env = {**os.environ, "DAGSTER_HOME": str(work / "dagster"), "HF_HUB_OFFLINE": "1"}
    (work / "dagster").mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "embed_assets",
        "run",
        "--corpus-dir",
        str(corpus),
        "--home",
        str(work / "home"),
    ]
    start = time.perf_counter()
    done = subprocess.run([*cmd, *extra], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((work / "home" / "last_run.json").read_text())
    return {
        "wall_seconds": round(wall, 1),
        "summary": summary,
        "counts": materialization_counts(work, summary["run_id"]),
    }


def materialization_counts(work: Path, run_id: str) -> dict:
    os.environ["DAGSTER_HOME"] = str(work / "dagster")
    import dagster as dg

    instance = dg.DagsterInstance.get()
    out: dict = {}
    for record in instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records:
        mat = record.event_log_entry.asset_materialization
        for key, value in mat.metadata.items():
            if key in COUNTED or key in ("chunks_added", "chunks", "questions"):
                out[f"{mat.asset_key.to_user_string()}.{key}"] = value.value
    instance.dispose()
    return out


def hold_out(corpus: Path, dst: Path, share: float, seed: int) -> tuple[list[Path], int]:
    """Copy ``corpus`` to ``dst`` without a seeded set of documents holding about ``share`` of the text."""
    shutil.copytree(corpus, dst)
    files = sorted(p for p in dst.rglob("*") if p.is_file() and p.suffix in {".md", ".txt", ".html"})
    total = sum(p.stat().st_size for p in files)
    random.Random(seed).shuffle(files)
    held, size = [], 0
    for p in files:
        if size >= share * total:
            break
        held.append(p)
        size += p.stat().st_size
    stash = dst.parent / "held_out"
    stash.mkdir()
    for p in held:
        target = stash / p.relative_to(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        p.rename(target)
    return held, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    parser.add_argument(
        "--share", type=float, default=0.05, help="share of the corpus added back (default 0.05)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(RESULTS / "incremental"))
    parser.add_argument("--no-warm-start", action="store_true", help="skip the third run")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_incremental_") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        held, held_bytes = hold_out(Path(args.corpus), corpus, args.share, args.seed)
        state = tmp / "state"
        full = run_cli(state, corpus, [])
        for p in held:  # the new documents arrive
            rel = p.relative_to(corpus)
            (tmp / "held_out" / rel).rename(corpus / rel)
        warm_state = tmp / "warm_state"
        if not args.no_warm_start:
            shutil.copytree(state, warm_state)
        incremental = run_cli(state, corpus, [])
        warm = None
        if not args.no_warm_start:
            recipe = tmp / "warm.yaml"
            recipe.write_text("ops: {training_recipe: {config: {finetuned_model: {warm_start: true}}}}\n")
            warm = run_cli(warm_state, corpus, ["--config", str(recipe)])

    record = {
        "command": "python benchmarks/bench_incremental.py " + " ".join(argv or sys.argv[1:]),
        "held_out_documents": len(held),
        "held_out_bytes": held_bytes,
        "full": full,
        "incremental": incremental,
        "warm_start": warm,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(report(record))
    print(report(record))
    return 0


def _stage(run: dict, asset: str) -> float:
    return float(run["summary"]["stages"].get(asset, {}).get("wall_seconds") or 0.0)


def report(r: dict) -> str:
    full, inc = r["full"], r["incremental"]
    fc, ic = full["counts"], inc["counts"]
    chunks = ic.get("document_chunks.chunks", 0)
    lines = [
        "# Incremental run after new chunks",
        "",
        f"Command: `{r['command'].strip()}`. {r['held_out_documents']} documents "
        f"({r['held_out_bytes'] / 1e3:.0f} kB) held out of the first run and added back for the second.",
        "",
        "| | full run (without them) | triggered run (with them) |",
        "| --- | --- | --- |",
        f"| chunks | {fc.get('document_chunks.chunks')} | {chunks} ({ic.get('document_chunks.chunks_added')} new) |",
        f"| chunks embedded | {fc.get('base_chunk_index.embeddings_computed')} | {ic.get('base_chunk_index.embeddings_computed')} |",
        f"| chunks given questions | {fc.get('synthetic_qa.chunks_generated_for')} | {ic.get('synthetic_qa.chunks_generated_for')} |",
        f"| questions reused | 0 | {ic.get('synthetic_qa.questions_reused')} |",
        f"| embedding stage (s) | {_stage(full, 'base_chunk_index')} | {_stage(inc, 'base_chunk_index')} |",
        f"| generation stage (s) | {_stage(full, 'synthetic_qa')} | {_stage(inc, 'synthetic_qa')} |",
        f"| whole run (s) | {full['wall_seconds']} | {inc['wall_seconds']} |",
    ]
    by_generator = inc["summary"].get("synthetic_by_generator") or {}
    if by_generator:
        lines += [
            "",
            "The triggered run's evaluation (the whole default corpus) by question generator, nDCG@10:",
            "",
            "| generator | test questions | base | fine-tuned | delta (points) |",
            "| --- | --- | --- | --- | --- |",
            *(
                f"| {g} | {m['queries']} | {m['base']:.4f} | {m['fine_tuned']:.4f} | {m['delta_points']:+.2f} |"
                for g, m in by_generator.items()
            ),
        ]
    if r.get("warm_start"):
        warm = r["warm_start"]["summary"]
        cold = inc["summary"]
        lines += [
            "",
            "Warm start against training from the base, same corpus, test split and step budget:",
            "",
            "| training starts from | nDCG@10 base | nDCG@10 fine-tuned | Recall@10 | whole run (s) |",
            "| --- | --- | --- | --- | --- |",
            f"| the base model | {cold['base']['NDCG@10']:.4f} | {cold['fine_tuned']['NDCG@10']:.4f} | "
            f"{cold['fine_tuned']['Recall@10']:.4f} | {inc['wall_seconds']} |",
            f"| the last exported model | {warm['base']['NDCG@10']:.4f} | {warm['fine_tuned']['NDCG@10']:.4f} | "
            f"{warm['fine_tuned']['Recall@10']:.4f} | {r['warm_start']['wall_seconds']} |",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
