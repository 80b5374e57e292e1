"""Which model-free score ranks the recipe candidates the way real queries do?

``auto`` chooses a preset by nDCG@10 on held-out generated questions of every generator
(:mod:`embed_assets.recipe.selection`). On NFCorpus that score prefers identifier-manual, which
the real dev queries score below the base. This probe retrains each candidate's selection prefix
exactly as the product does (``train_prefix`` with the product's rows, config and validation
set, from a finished run's kept assets) and scores each prefix, and the base, on:

- the product's validation set (every generator's questions: today's rule);
- each generator's questions alone (same corpus), and their macro-average;
- a labelled split set aside for tuning (``--split dev``), as
  :func:`~embed_assets.training.validation.labelled_validation_set` builds it.

It trains on the train split and scores on validation and dev only, never on test.

    python benchmarks/probe_selection_proxy.py --home /tmp/s12/nfc7/home \\
        --labelled ../shared/benchmarks/nfcorpus --split dev --seed 7 --out /tmp/probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl

from embed_assets.defs.io_manager import latest_value
from embed_assets.evaluation.labelled import labelled_queries_of
from embed_assets.models import DEFAULT_BASE_MODEL, encode, load_model, resolve_model_path
from embed_assets.recipe.presets import PRESETS, preset_training_rows
from embed_assets.recipe.settings import FinetunedModelSettings, TrainingExamplesSettings
from embed_assets.training.trainer import ValidationSet, planned_steps, train_prefix, validation_ndcg10
from embed_assets.training.validation import labelled_validation_set, validation_set


def only(val: ValidationSet, qa_ids: set[str]) -> ValidationSet:
    """``val`` restricted to some of its questions, over the same corpus."""
    keep = sorted(q for q in val.queries if q in qa_ids)
    return ValidationSet({q: val.queries[q] for q in keep}, val.corpus, {q: val.relevant[q] for q in keep})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", required=True, type=Path, help="a finished run's artifact home")
    parser.add_argument(
        "--labelled", type=Path, default=None, help="a BEIR folder of the same corpus, if any"
    )
    parser.add_argument("--split", default="dev", help="the labelled split to compare with (never test)")
    parser.add_argument("--seed", type=int, default=42, help="finetuned_model.seed of the run")
    parser.add_argument("--steps", type=int, default=16, help="recipe.selection_steps")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: HOME/../probe_selection_proxy")
    parser.add_argument("--batch-size", type=int, default=None, help="smoke tests shrink it")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.split == "test":
        parser.error("--split test: the test split only scores; choose on another split")
    work = args.work_dir or args.home.parent / "probe_selection_proxy"

    mined, splits = latest_value(args.home, "mined_negatives"), latest_value(args.home, "qa_splits")
    chunks, documents = (
        latest_value(args.home, "document_chunks"),
        latest_value(args.home, "source_documents"),
    )
    examples = TrainingExamplesSettings()
    model = FinetunedModelSettings(
        seed=args.seed, **({"batch_size": args.batch_size} if args.batch_size else {})
    )
    val = validation_set(splits, chunks, model.val_distractors, model.seed)
    val_rows = splits.filter(pl.col("split") == "val")
    sets = {"generated (all)": val}
    for generator in sorted(set(val_rows["generator"])):
        sets[f"generated ({generator})"] = only(
            val, set(val_rows.filter(pl.col("generator") == generator)["qa_id"])
        )
    if args.labelled:
        labelled = labelled_queries_of(args.labelled, args.split, documents)
        sets[f"labelled ({args.split})"] = labelled_validation_set(
            labelled.queries,
            labelled.qrels,
            chunks,
            model.val_distractors,
            model.seed,
            model.selection_corpus_chunks,
        )

    def scores(encoder) -> dict[str, float]:
        # The generated sets share one corpus: embed it once per model.
        shared = encode(encoder, list(val.corpus.values()))
        return {
            name: validation_ndcg10(encoder, s, shared if s.corpus is val.corpus else None)
            for name, s in sets.items()
        }

    base_path = resolve_model_path(DEFAULT_BASE_MODEL)
    start = time.perf_counter()
    table = {"base": scores(load_model(base_path))}
    for preset in PRESETS.values():
        rows = preset_training_rows(preset, examples, mined, splits, chunks).filter(
            pl.col("split") == "train"
        )
        config = model.to_core(preset)
        steps = min(args.steps, planned_steps(rows.height, config))
        try:
            prefix = train_prefix(base_path, rows, work / preset.name, config, val, steps)
        except ValueError as e:  # too few rows for a batch: the product records the same and skips it
            table[preset.name] = {"note": str(e)}
            continue
        # the prefix's weights at ``steps`` are the model the product scored (no merge)
        checkpoint = work / preset.name / "checkpoints" / f"checkpoint-{prefix.steps}"
        table[preset.name] = scores(load_model(str(checkpoint)))
        table[preset.name]["product's own score"] = prefix.val_ndcg10
    sizes = {name: len(s.queries) for name, s in sets.items()}
    gens = [n for n in sets if n.startswith("generated (") and n != "generated (all)"]
    for row in (r for r in table.values() if "note" not in r):
        row["generated (macro)"] = sum(row[g] for g in gens) / len(gens)
    record = {
        "command": " ".join(["python", *sys.argv]),
        "home": str(args.home),
        "queries": sizes,
        "steps": args.steps,
        "ndcg10": table,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
