"""Near-duplicate questions at scale: the exact all-pairs filter against the approximate one.

``near_duplicates`` (``embed_assets/quality/filters.py``) compares every pair of questions up to
``EXACT_DEDUP_MAX_ROWS`` rows and searches a faiss IVF index above. This runs each path on 1x,
10x and 100x the default run's questions, each (scale, path) in a fresh process.

Vectors: 1x is the default run's questions (the default corpus' chunks, the ``auto`` recipe's
generators at their default settings: the 7,184 rows of ``synthetic_qa``), embedded by
all-MiniLM-L6-v2 (384 dims, unit length). Scale s adds s - 1 seeded copies of them, each through
its own random map x -> normalise(x + W x) (W Gaussian, entries N(0, 1/dim)). The map is smooth,
so a copy keeps the real questions' duplicate structure (the same share of duplicates, with
cosines jittered around the threshold), while it sits at cosine ~0.7 from its source: new
questions on the same topics, not copies of the old ones. Priority order: a seeded permutation.

Per (scale, path): the call's seconds and the process's peak RSS during it (sampled every
10 ms; the process's RSS before the call, the vectors included, 1.1 GB of them at 100x, counts). Above ``--exact-full-max`` rows the exact
path runs only its last ``--exact-blocks`` blocks (the largest, so its peak RSS is a full run's)
and its time is extrapolated by the row pairs the blocks compare. The approximate mask is
compared with the exact one where that ran in full; at every scale ``--audit`` kept rows are
checked for a kept, earlier row at or above the threshold (a duplicate the index missed).

    python benchmarks/bench_near_duplicates.py [--scales 1 10 100]

Writes ``benchmarks/results/near-duplicates.json`` and ``.md`` (``--out``, without suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
THRESHOLD = 0.9  # QualityConfig.dedup_cosine's default
BLOCK = 512  # near_duplicates' default block


def _questions(corpus: Path) -> list[str]:
    """The ``synthetic_qa`` questions of a default run over ``corpus``."""
    import polars as pl

    from embed_assets.defs.resources import QuestionGeneratorResource
    from embed_assets.ingest.chunking import chunk_documents
    from embed_assets.ingest.documents import read_corpus
    from embed_assets.models import load_model
    from embed_assets.recipe.presets import AUTO, fill, generators_for, preset_for_generator
    from embed_assets.recipe.settings import SyntheticQASettings

    chunks = chunk_documents(read_corpus(corpus).documents, load_model("all-MiniLM-L6-v2").tokenizer)
    settings = SyntheticQASettings().model_dump()
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in generators_for(AUTO):
            generator = QuestionGeneratorResource().build(Path(tmp) / "llm_cache.sqlite", backend)
            per_chunk = fill("synthetic_qa", settings, preset_for_generator(backend))
            frames.append(
                generator.generate(
                    chunks,
                    questions_per_chunk=per_chunk["questions_per_chunk"],
                    multi_hop_questions=settings["multi_hop_questions"],
                    seed=settings["seed"],
                ).qa
            )
    # As the asset does: one row per qa_id.
    return pl.concat(frames).unique("qa_id", keep="first", maintain_order=True)["question"].to_list()


def _scaled(base: np.ndarray, scale: int) -> np.ndarray:
    """``base`` and ``scale - 1`` seeded copies, each through its own map normalise(x + W x)."""
    n, dim = base.shape
    out = np.empty((n * scale, dim), dtype=np.float32)
    out[:n] = base
    rng = np.random.default_rng(0)
    for c in range(1, scale):
        w = rng.normal(0.0, 1.0 / np.sqrt(dim), (dim, dim)).astype(np.float32)
        copy = base + base @ w.T
        out[c * n : (c + 1) * n] = copy / np.linalg.norm(copy, axis=1, keepdims=True)
    return out


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _exact_tail_cost(n: int, from_row: int) -> int:
    """Row pairs the exact path's blocks from ``from_row`` on compare (a block: its rows x its stop)."""
    return sum((min(s + BLOCK, n) - s) * min(s + BLOCK, n) for s in range(from_row, n, BLOCK))


def _audit(vectors: np.ndarray, order: np.ndarray, dup: np.ndarray, sample: int) -> dict:
    """Of ``sample`` random kept rows, how many have a kept, earlier row at or above the threshold."""
    ranked_dup = dup[order]
    kept = np.flatnonzero(~ranked_dup)
    picked = np.sort(np.random.default_rng(2).choice(kept, size=min(sample, len(kept)), replace=False))
    queries = vectors[order[picked]]
    missed = np.zeros(len(picked), dtype=bool)
    for start in range(0, len(order), 65_536):
        positions = np.arange(start, min(start + 65_536, len(order)))
        sims = vectors[order[positions]] @ queries.T
        earlier_kept = (~ranked_dup[positions])[:, None] & (positions[:, None] < picked[None, :])
        missed |= ((sims >= THRESHOLD) & earlier_kept).any(axis=0)
    return {"audited_kept_rows": len(picked), "kept_rows_with_a_kept_duplicate": int(missed.sum())}


def _child(
    vectors_path: str, scale: int, path: str, mask_path: str, exact_full_max: int, blocks: int, audit: int
) -> None:
    from bench_ann_memory import _peak_growth

    from embed_assets.quality.filters import _exact_pairs, near_duplicates

    vectors = _scaled(np.load(vectors_path), scale)
    n = len(vectors)
    order = np.random.default_rng(1).permutation(n)
    record = {"scale": scale, "rows": n, "path": path, "rss_before_mb": round(_rss_mb())}
    out = {}
    if path == "exact" and n > exact_full_max:
        from_row = max(0, (n - 1) // BLOCK - blocks + 1) * BLOCK

        def gather() -> None:
            out["ranked"] = np.ascontiguousarray(vectors[order], dtype=np.float32)

        def tail() -> None:
            _exact_pairs(out["ranked"], THRESHOLD, BLOCK, from_row=from_row)
            del out["ranked"]  # the call would drop it on return, as near_duplicates does

        # The copy stays alive through the blocks, as in a full run, so the peak is a full run's.
        gather_growth, gather_s = _peak_growth(gather)
        growth, tail_s = _peak_growth(tail)
        growth += gather_growth
        record |= {
            "seconds": round(gather_s + tail_s * _exact_tail_cost(n, 0) / _exact_tail_cost(n, from_row), 1),
            "extrapolated_from_blocks": f"{len(range(from_row, n, BLOCK))} of {len(range(0, n, BLOCK))}",
            "measured_seconds": round(gather_s + tail_s, 1),
        }
    else:
        exact_max_rows = n if path == "exact" else 0
        growth, seconds = _peak_growth(
            lambda: out.update(
                dup=near_duplicates(vectors, order, THRESHOLD, BLOCK, exact_max_rows=exact_max_rows)
            )
        )
        record |= {"seconds": round(seconds, 2), "duplicates": int(out["dup"].sum())}
        np.save(mask_path, out["dup"])
    record["peak_rss_mb"] = record["rss_before_mb"] + growth
    if path == "approximate":
        record |= _audit(vectors, order, out["dup"], audit)
    print(json.dumps(record))


def _run_child(*args: object) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _markdown(record: dict) -> str:
    lines = [
        "# Near-duplicate questions: exact against approximate",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{record['machine']}; {record['base_questions']} questions of {record['corpus']} embedded by "
        f"all-MiniLM-L6-v2, threshold {THRESHOLD}, priority a seeded permutation. Each figure from a fresh "
        "process; peak RSS is the process's during the call (the vectors included).",
        "",
        "| scale | rows | duplicates | exact s | exact peak RSS (MB) | approximate s | approximate peak RSS (MB) "
        "| RSS before (MB) | approximate vs exact | kept rows with a kept duplicate (audit) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in record["scales"]:
        ex, ap = row["exact"], row["approximate"]
        exact_s = f"{ex['seconds']}" + (
            f" (extrapolated from {ex['extrapolated_from_blocks']} blocks)"
            if "extrapolated_from_blocks" in ex
            else ""
        )
        agreement = row.get("agreement", {})
        versus = (
            f"same mask: {agreement['same_mask']}; recall {agreement['duplicate_recall']}, "
            f"{agreement['false_duplicates']} false"
            if agreement
            else "exact not run in full"
        )
        lines.append(
            f"| {row['scale']}x | {row['rows']:,} | {ap['duplicates']:,} | {exact_s} | {ex['peak_rss_mb']:,} "
            f"| {ap['seconds']} | {ap['peak_rss_mb']:,} | {ap['rss_before_mb']:,} | {versus} "
            f"| {ap['kept_rows_with_a_kept_duplicate']} of {ap['audited_kept_rows']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--exact-full-max", type=int, default=100_000, help="above: exact time extrapolated")
    p.add_argument("--exact-blocks", type=int, default=8, help="blocks the exact path runs above it")
    p.add_argument("--audit", type=int, default=1000, help="kept rows audited per scale")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "near-duplicates"))
    p.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # one measurement in this fresh process
        vectors_path, scale, path, mask_path, full_max, blocks, audit = a.child
        _child(vectors_path, int(scale), path, mask_path, int(full_max), int(blocks), int(audit))
        return 0

    from embed_assets.models import encode, load_model

    questions = _questions(Path(a.corpus))
    base = encode(load_model("all-MiniLM-L6-v2"), questions).astype(np.float32)
    scales = []
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "base.npy", base)
        for scale in a.scales:
            row = {"scale": scale, "rows": scale * len(base)}
            for path in ("exact", "approximate"):
                row[path] = _run_child(
                    Path(tmp) / "base.npy",
                    scale,
                    path,
                    Path(tmp) / f"{path}.npy",
                    a.exact_full_max,
                    a.exact_blocks,
                    a.audit,
                )
            if "duplicates" in row["exact"]:
                exact, approximate = np.load(Path(tmp) / "exact.npy"), np.load(Path(tmp) / "approximate.npy")
                row["agreement"] = {
                    "same_mask": bool(np.array_equal(exact, approximate)),
                    "duplicate_recall": round(float((exact & approximate).sum() / max(exact.sum(), 1)), 5),
                    "false_duplicates": int((approximate & ~exact).sum()),
                }
            print(json.dumps(row), flush=True)
            scales.append(row)
    record = {
        "command": " ".join(
            ["python benchmarks/bench_near_duplicates.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end",
        "corpus": Path(a.corpus).resolve().relative_to(ROOT).as_posix()
        if Path(a.corpus).resolve().is_relative_to(ROOT)
        else a.corpus,
        "base_questions": len(base),
        "scales": scales,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(_markdown(record), encoding="utf-8")
    print(_markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
