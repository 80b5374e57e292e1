"""Does the product's label-free recipe choice agree with real dev queries?

``auto`` chooses a preset by nDCG@10 on held-out generated questions of every generator
(:mod:`embed_assets.recipe.selection`); with a teacher, by the teacher's judgement of them. This
benchmark retrains each candidate's selection prefix exactly as the product does
(``train_prefix`` with the product's rows, config and validation set, from a finished run's kept
assets) and scores each prefix, and the base, on:

- the product's validation set (every generator's questions: the rule without a teacher);
- each generator's questions alone (same corpus), and their macro-average;
- a labelled split set aside for tuning (``--split dev``), as
  :func:`~embed_assets.training.validation.labelled_validation_set` builds it;
- with ``--teacher``: the product's validation set judged by the teacher (its top
  ``judge_top_k`` chunks per question count as relevant, :mod:`embed_assets.teacher.judged`), the
  rule the product follows with a teacher. Rows then carry the run's teacher labels, as the
  product's do.

Each set's pick (the best preset; a tie keeps the earlier, as ``auto`` does) is printed with the
labelled split's score of that pick. It trains on the train split and scores on validation and
dev only, never on test. ``--home`` is a finished run's artifact home (``W/home`` after
``bench_nfcorpus.py --work-dir W``, whose Cranfield half split is ``W/labelled``); the retrained
prefixes go to ``--work-dir`` (default ``HOME/../selection_agreement``).

    python benchmarks/bench_selection_agreement.py --home W/home --labelled ../shared/benchmarks/nfcorpus \\
        --split dev --seed 7 --out benchmarks/results/selection-agreement-nfcorpus-seed7.json
    python benchmarks/bench_selection_agreement.py --home W/home --labelled W/labelled --split dev \\
        --seed 42 --teacher all-mpnet-base-v2 \\
        --out benchmarks/results/selection-agreement-cranfield-teacher-seed42.json   # a teacher run

Prints the JSON record and, with ``--out``, writes it there:
``benchmarks/results/selection-agreement-<dataset>[-teacher]-seed<N>.json``.
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


JUDGED = "teacher-judged"


def judged_set(home: Path, teacher_name: str, val: ValidationSet) -> ValidationSet:
    """``val`` judged by the teacher as the product judges it (its caches in ``home``)."""
    from embed_assets.evaluation.retrieval import retrieve
    from embed_assets.recipe.settings import TeacherSettings
    from embed_assets.teacher.judged import teacher_judged_set
    from embed_assets.teacher.scorer import TeacherScoreCache, load_teacher

    settings = TeacherSettings(name_or_path=teacher_name)
    teacher = load_teacher(settings.name_or_path, settings.kind).with_embedding_cache(home / "lancedb")
    base = load_model(resolve_model_path(DEFAULT_BASE_MODEL))
    cache = TeacherScoreCache(home / "teacher" / "scores.sqlite")
    try:
        return teacher_judged_set(
            val, teacher, cache, settings.judge_top_k, lambda k: retrieve(base, val.corpus, val.queries, k)
        )
    finally:
        cache.close()


def picks(table: dict[str, dict], labelled: str | None) -> dict[str, dict]:
    """Each set's preset (the best; ties keep the earlier) and, with ``labelled``, that pick's
    labelled score and its distance in points from the labelled split's own pick."""
    presets = [p for p in PRESETS if "note" not in table.get(p, {"note": ""})]
    out = {}
    for name in table["base"]:
        best = max(presets, key=lambda p: (table[p][name], -presets.index(p)))
        out[name] = {"pick": best}
        if labelled:
            top = max(table[p][labelled] for p in presets)
            out[name]["labelled_points_below_labelled_pick"] = round((top - table[best][labelled]) * 100, 2)
    return out


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
    parser.add_argument("--work-dir", type=Path, default=None, help="default: HOME/../selection_agreement")
    parser.add_argument("--batch-size", type=int, default=None, help="smoke tests shrink it")
    parser.add_argument("--teacher", default=None, help="the run's teacher: adds the teacher-judged set")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON record here too")
    args = parser.parse_args(argv)
    if args.split == "test":
        parser.error("--split test: the test split only scores; choose on another split")
    work = args.work_dir or args.home.parent / "selection_agreement"

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
    teacher_labels = latest_value(args.home, "teacher_labels") if args.teacher else None
    if args.teacher:
        sets[JUDGED] = judged_set(args.home, args.teacher, val)
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
        rows = preset_training_rows(preset, examples, mined, splits, chunks, teacher_labels).filter(
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
        "teacher": args.teacher,
        "queries": sizes,
        "picks": picks(table, f"labelled ({args.split})" if args.labelled else None),
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
