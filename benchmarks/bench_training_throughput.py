"""Training throughput: embed_assets' trainer vs a bare sentence-transformers loop, side by side.

Both train the same base model on the same rows with the same loss
(MultipleNegativesRankingLoss, scale 50, one hard negative), batch size, sequence
length, optimiser and schedule. Only optimiser steps are timed.

    python benchmarks/bench_training_throughput.py --steps 12 --rows data.parquet

Output: the table on stdout; ``benchmarks/results/training-throughput.md`` holds the latest.

Without ``--rows`` the rows come from a fresh pipeline run on the test mini corpus
(template questions, mined negatives), which takes a minute.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import polars as pl
import torch

from embed_assets.models import resolve_model_path
from embed_assets.training.trainer import TrainingConfig, train_bi_encoder


def rows_from_mini_corpus(tmp: Path) -> pl.DataFrame:
    import dagster as dg

    from embed_assets.defs.definitions import all_assets, build_resources

    corpus = Path(__file__).resolve().parents[1] / "embed_assets_tests" / "fixtures" / "mini_corpus"
    result = dg.materialize(
        all_assets,
        selection=dg.AssetSelection.assets("training_examples").upstream(),
        run_config={
            "ops": {
                "source_documents": {"config": {"corpus_dir": str(corpus)}},
                "qa_quality_scores": {"config": {"roundtrip_top_k": 50}},
                "qa_splits": {"config": {"val_fraction": 0.0, "test_fraction": 0.0}},
                "training_recipe": {"config": {"training_examples": {"min_batches": 1}}},
            }
        },
        resources=build_resources(str(tmp)),
        instance=dg.DagsterInstance.ephemeral(),
    )
    return result.output_for_node("training_examples")


def bare_loop(
    rows: pl.DataFrame, steps: int, batch_size: int, max_seq_length: int, lr: float, seed: int
) -> float:
    """The textbook loop: tokenize, MNRL forward, backward, AdamW + warmup/cosine. Returns examples/s."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import get_cosine_schedule_with_warmup

    torch.manual_seed(seed)
    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = max_seq_length
    loss_fn = MultipleNegativesRankingLoss(model, scale=50.0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = get_cosine_schedule_with_warmup(opt, int(0.1 * steps), steps)
    cols = ["anchor", "positive"] + sorted(c for c in rows.columns if c.startswith("negative_"))
    data = rows.select(cols).sample(fraction=1.0, shuffle=True, seed=seed)
    model.train()
    seconds = 0.0
    for step in range(steps):
        batch = data.slice((step * batch_size) % max(data.height - batch_size, 1), batch_size)
        start = time.perf_counter()
        features = [
            {
                k: v.to(model.device) if hasattr(v, "to") else v
                for k, v in model.tokenize(batch[c].to_list()).items()
            }
            for c in cols
        ]
        loss = loss_fn(features, None)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        seconds += time.perf_counter() - start
    return steps * batch_size / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", help="training_examples parquet (default: build from the mini corpus)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="alternate the two loops this many times")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)

    with tempfile.TemporaryDirectory() as tmp:
        rows = pl.read_parquet(args.rows) if args.rows else rows_from_mini_corpus(Path(tmp) / "home")
        rows = rows.select(["anchor", "positive", *[c for c in rows.columns if c == "negative_1"]])
        need = args.steps * args.batch_size
        while rows.height < need:
            rows = pl.concat(
                [rows, rows.with_columns(pl.col("anchor") + " ")]
            )  # distinct anchors, same texts
        ours, bare = [], []
        for r in range(args.repeats):
            config = TrainingConfig(
                max_steps=args.steps,
                batch_size=args.batch_size,
                mini_batch_size=args.batch_size,
                max_seq_length=args.max_seq_length,
                merge_weights=(0.0,),
                seed=42 + r,
            )
            res = train_bi_encoder("all-MiniLM-L6-v2", rows, Path(tmp) / f"ours-{r}", config)
            ours.append(res.examples_per_second)
            bare.append(
                bare_loop(
                    rows, args.steps, args.batch_size, args.max_seq_length, config.learning_rate, 42 + r
                )
            )
            print(f"repeat {r}: ours {ours[-1]:.2f} ex/s, bare {bare[-1]:.2f} ex/s", flush=True)
    best_ours, best_bare = max(ours), max(bare)
    print(f"\nCommand: `{' '.join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}`\n")
    print(
        f"{rows.height} rows, batch {args.batch_size}, {args.steps} steps, max_seq_length {args.max_seq_length}, "
        f"1 hard negative, MNRL scale 50; {platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}; best of {args.repeats}\n"
    )
    print("| loop | examples/s | ratio to bare |\n| --- | --- | --- |")
    print(f"| bare sentence-transformers loop | {best_bare:.2f} | 1.00 |")
    print(f"| embed_assets train_bi_encoder | {best_ours:.2f} | {best_ours / best_bare:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
