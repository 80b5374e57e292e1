"""Which questions should a preset train on? Compare preset variants on the validation split.

Reads the assets a finished run kept (``bench_default_run.py --keep DIR``: ``DIR/home``), builds
each variant's training rows and config the way the product does (``training_rows`` and
``FinetunedModelSettings.to_core``), and scores every variant with the product's own recipe
selection (:func:`embed_assets.recipe.selection.choose_recipe`) on the run's validation split:
held-out generated questions of held-out documents, never the test split. Each variant trains
for ``--steps`` steps with no checkpoint or merge choice, so the variants differ only in what
they train on and how.

    python benchmarks/explore_preset_generators.py --home DIR/home --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl

from embed_assets.defs.io_manager import latest_value
from embed_assets.models import DEFAULT_BASE_MODEL, resolve_model_path
from embed_assets.recipe.presets import IDENTIFIER_MANUAL, TITLED_DOCUMENTS, Preset, preset_training_rows
from embed_assets.recipe.selection import choose_recipe
from embed_assets.recipe.settings import FinetunedModelSettings, TrainingExamplesSettings
from embed_assets.training.validation import validation_set

VARIANTS: dict[str, Preset] = {
    "identifier-manual": IDENTIFIER_MANUAL,
    "identifier-manual+structure": replace(
        IDENTIFIER_MANUAL, name="identifier-manual+structure", generators=("template", "structure")
    ),
    "titled-documents": TITLED_DOCUMENTS,
    "titled-documents+template": replace(
        TITLED_DOCUMENTS, name="titled-documents+template", generators=("structure", "template")
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", required=True, type=Path, help="a finished run's artifact home")
    parser.add_argument("--steps", type=int, default=40, help="training steps per variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="write the scores here as JSON")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where candidates train and scores are cached (default: HOME/../explore_preset_generators)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows per step (default: the product's; smoke tests shrink it)",
    )
    args = parser.parse_args(argv)

    mined = latest_value(args.home, "mined_negatives")
    splits = latest_value(args.home, "qa_splits")
    chunks = latest_value(args.home, "document_chunks")
    examples = TrainingExamplesSettings()
    model = FinetunedModelSettings(**({"batch_size": args.batch_size} if args.batch_size else {}))

    def rows_for(preset: Preset) -> pl.DataFrame:
        rows = preset_training_rows(preset, examples, mined, splits, chunks)
        return rows.filter(pl.col("split") == "train")

    start = time.perf_counter()
    choice = choose_recipe(
        "explore",
        [VARIANTS[v] for v in args.variants],
        rows_for=rows_for,
        config_for=model.to_core,
        base_model=resolve_model_path(DEFAULT_BASE_MODEL),
        val=validation_set(splits, chunks, model.val_distractors, model.seed),
        selection_steps=args.steps,
        cache_dir=args.work_dir or args.home.parent / "explore_preset_generators",
    )
    val = splits.filter(pl.col("split") == "val")
    record = {
        "command": " ".join(["python", *sys.argv]),
        "home": str(args.home),
        "val_questions_by_generator": dict(val.group_by("generator").len().iter_rows()),
        "steps": args.steps,
        "chosen": choice.chosen,
        "candidates": choice.to_dict()["candidates"],
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
