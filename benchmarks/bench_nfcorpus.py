"""The product on a BEIR folder's real queries: base vs a plain fine-tuning peer vs embed_assets, one run.

**The product is run as users run it**: ``embed-assets run --corpus-jsonl <folder>/corpus.jsonl
--labelled-queries <folder> --labelled-split <split>``, with its defaults (``recipe: auto``) and
nothing else but the seed. The labelled queries only score the models (the product reports
them beside its synthetic test split and gates on both); they never reach training or the
recipe choice, unless ``--selection-split dev`` sets another split of them aside for the
product's choices (its ``--selection-split``: recipe, checkpoint and merge weight), as a user
with a few judged queries can. This script then reads what the run wrote in its home and adds, in the same run:

- **peer**: the plain sentence-transformers recipe on the same generated questions: every
  question of the chosen recipe's generators whose document the product trained on,
  unfiltered, ``MultipleNegativesRankingLoss`` at its default scale 20, no mined negatives, no
  validation, no merge, for as many steps of the same batch size as the product trained;
- **two ways of scoring** each of base, peer and ours on the real queries: *chunked* (the
  product's way: its chunks are searched, a document scores its best chunk; base and ours are
  the product's own figures and per-query scores, the peer is scored the same way here) and
  *whole document* (title + text, cut at ``--eval-seq-len`` tokens: how BEIR leaderboards score).

Any BEIR folder works (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``). A collection
with only a test split (Cranfield) gets a seeded half split of its judged queries
(``--half-split-seed``): "dev" for tuning, the other half "test" for reporting, so nothing is
tuned on the reported queries.

    python benchmarks/bench_nfcorpus.py                                  # NFCorpus test
    python benchmarks/bench_nfcorpus.py --split dev                      # what to tune on
    python benchmarks/bench_nfcorpus.py --beir-dir ../shared/benchmarks/cranfield --half-split-seed 42
    python benchmarks/bench_nfcorpus.py --seed 7                          # pool seeds with summarise_seeds.py
    python benchmarks/bench_nfcorpus.py --selection-split dev             # dev queries choose, test reports

Writes ``benchmarks/results/<dataset>-<split>-product[-seedN][-chosen-on-<split>].md`` and ``.json``: both scorings,
paired bootstraps, the recipe the product chose and why, wall time, peak RSS and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402
import yaml  # noqa: E402

from embed_assets.defs.io_manager import latest_value  # noqa: E402  (the product's own reader)

METRICS = ("NDCG@10", "Recall@10", "Recall@100", "MAP@10")
DEFAULT_BEIR_DIR = REPO.parent / "shared" / "benchmarks" / "nfcorpus"
SEEDED = ("synthetic_qa", "qa_splits", "mined_negatives")  # the configs with a seed (and training's)
PEER_SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default


def half_split(beir_dir: Path, dst: Path, seed: int) -> Path:
    """A copy of ``beir_dir``'s queries with ``qrels/test.tsv`` cut into seeded halves by query:
    ``qrels/dev.tsv`` and ``qrels/test.tsv``."""
    lines = (beir_dir / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [x for x in lines[1:] if x.strip()]
    qids = sorted({x.split("\t")[0] for x in rows})
    random.Random(seed).shuffle(qids)
    dev = set(qids[: len(qids) // 2])
    (dst / "qrels").mkdir(parents=True, exist_ok=True)  # a kept --work-dir is run again
    (dst / "queries.jsonl").write_bytes((beir_dir / "queries.jsonl").read_bytes())
    for split, keep in (("dev", lambda q: q in dev), ("test", lambda q: q not in dev)):
        chosen = [x for x in rows if keep(x.split("\t")[0])]
        (dst / "qrels" / f"{split}.tsv").write_text("\n".join([header, *chosen]) + "\n", encoding="utf-8")
    return dst


def _merge(into: dict, extra: dict) -> None:
    """``extra``'s settings into ``into``, nested mappings merged field by field."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def run_product(beir_dir: Path, labelled: Path, split: str, work: Path, args) -> dict:
    """``embed-assets run`` in a subprocess, the way a user runs it; its wall time and peak RSS."""
    config: dict = {"ops": {asset: {"config": {"seed": args.seed}} for asset in SEEDED}}
    config["ops"]["training_recipe"] = {"config": {"finetuned_model": {"seed": args.seed}}}
    for extra in args.config or []:  # smoke tests shrink budgets; a real benchmark passes none
        _merge(config, yaml.safe_load(Path(extra).read_text()) or {})
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "embed_assets", "run", "--corpus-jsonl", str(beir_dir / "corpus.jsonl")]
    cmd += ["--labelled-queries", str(labelled), "--labelled-split", split, "--home", str(work / "home")]
    cmd += ["--config", str(work / "run.yaml")] + (["--recipe", args.recipe] if args.recipe else [])
    cmd += ["--selection-split", args.selection_split] if args.selection_split else []
    cmd += ["--teacher", args.teacher] if args.teacher else []
    env = {**os.environ, "DAGSTER_HOME": str(work / "dagster")}
    (work / "dagster").mkdir(parents=True, exist_ok=True)
    print("[bench] product:", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    with (work / "product.log").open("w") as log:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    # A run whose only failure is the no-regression gate is a product outcome, not an error: the
    # model was trained and evaluated, the export was blocked, and a user keeps the base model.
    if done.returncode != 0 and not gate_blocked(work / "product.log"):
        sys.exit(f"the product run failed (exit {done.returncode}); its log: {work / 'product.log'}")
    return {
        "command": shlex.join(cmd),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "summary": json.loads((work / "home" / "last_run.json").read_text()),
    }


def peer_rows(home: Path, recipe: dict, trained_splits: set[str]) -> pl.DataFrame:
    """Every generated question of the chosen recipe's generators whose documents all lie in the
    splits the product trained on, unfiltered, one row per positive (titles stripped from title
    questions' positives, as the product does: otherwise the positive starts with the question)."""
    from embed_assets.generation.model_free import questions_from_title
    from embed_assets.generation.structure import strip_title
    from embed_assets.recipe.presets import PRESETS
    from embed_assets.training.examples import unroll_examples

    chunks, qa, splits = (latest_value(home, a) for a in ("document_chunks", "synthetic_qa", "qa_splits"))
    held_out = {
        d
        for ids, s in zip(splits["doc_ids"], splits["split"], strict=True)
        if s not in trained_splits
        for d in ids
    }
    generators = PRESETS[recipe["chosen"]].generator_names()
    qa = qa.filter(pl.col("generator").is_in(list(generators)))
    qa = qa.filter(~pl.col("doc_ids").list.eval(pl.element().is_in(list(held_out))).list.any())
    text = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    untitled = {
        c: strip_title(t, ti or "")
        for c, t, ti in zip(chunks["chunk_id"], chunks["text"], chunks["title"], strict=True)
    }
    from_title = set(
        qa.filter(pl.col("generator").map_elements(questions_from_title, return_dtype=pl.Boolean))["qa_id"]
    )
    mined = qa.select("qa_id", "question", "positive_chunk_ids").with_columns(
        negative_chunk_ids=pl.lit([], dtype=pl.List(pl.String))
    )
    return unroll_examples(mined, text, 0, untitled_text=untitled, untitled_qa_ids=from_title)


def score_both_ways(
    models: dict, home: Path, beir_dir: Path, labelled: Path, split: str, seq_len: int, product: dict
) -> dict:
    """nDCG@10 and friends of each model on the real queries, chunked and by whole document, with
    each query's nDCG@10 for the paired bootstraps. The chunked scores of base and ours are the
    product's (its ``retrieval_eval`` ran that search): each chunk corpus is encoded once."""
    from embed_assets.evaluation.labelled import document_run, load_labelled_queries
    from embed_assets.evaluation.metrics import ir_metrics, per_query_ndcg
    from embed_assets.evaluation.retrieval import joined_text, read_beir_corpus, retrieve
    from embed_assets.index.chunk_index import EmbeddingCache, model_key
    from embed_assets.models import embedding_dim, load_model

    chunks, sources = latest_value(home, "document_chunks"), latest_value(home, "source_documents")
    other = {}
    if "aliases" in sources.columns:
        dups = sources.select("doc_path", "aliases").explode("aliases").drop_nulls()
        other = dict(zip(dups["aliases"], dups["doc_path"], strict=True))
    real = load_labelled_queries(labelled, split, sources["doc_path"], other_names=other)
    chunk_text = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    chunk_doc = dict(zip(chunks["chunk_id"], chunks["doc_path"], strict=True))
    docs = {d: joined_text(t, x) for d, (t, x) in read_beir_corpus(beir_dir / "corpus.jsonl").items()}
    doc_qrels = {q: {d: g for d, g in j.items() if d in docs} for q, j in real.qrels.items()}
    out: dict = {"chunked": {}, "whole_document": {}, "queries": len(real.queries)}
    reported = product["summary"]["labelled"]
    per_query = pl.read_parquet(product["summary"]["per_query_path"]).filter(
        pl.col("query_set") == "labelled"
    )
    for name, side in (("base", "base"), ("ours", "fine_tuned")):
        out["chunked"][name] = {
            **{k: round(reported[side][k], 4) for k in METRICS},
            "per_query_ndcg10": dict(zip(per_query["query_id"], per_query[f"{side}_ndcg10"], strict=True)),
        }
    for name, path in models.items():
        print(f"[bench] scoring {name} ...", flush=True)
        model = load_model(path)
        if name not in out["chunked"]:
            depth = min(len(chunk_text), 1000)  # several chunks of a document collapse into one hit
            run = document_run(retrieve(model, chunk_text, real.queries, top_k=depth), chunk_doc, 100)
            out["chunked"][name] = _metrics(real.qrels, run, ir_metrics, per_query_ndcg)
        model.max_seq_length = seq_len
        embed = None
        if name == "base":  # its vectors do not depend on the seed: the next run in this home reads them
            table = f"{model_key(path)}_whole{seq_len}"
            embed = partial(
                EmbeddingCache(home / "lancedb", table, embedding_dim(model)).text_vectors, model=model
            )
        run = retrieve(model, docs, real.queries, top_k=100, embed=embed)
        out["whole_document"][name] = _metrics(doc_qrels, run, ir_metrics, per_query_ndcg)
    return out


def _metrics(qrels, run, ir_metrics, per_query_ndcg) -> dict:
    m = ir_metrics(qrels, run)
    return {**{k: round(m[k], 4) for k in METRICS}, "per_query_ndcg10": per_query_ndcg(qrels, run, 10)}


def significance(per_query: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Paired bootstrap of nDCG@10 for each fine-tuned model vs base, and ours vs the peer."""
    from embed_assets.evaluation.metrics import paired_bootstrap

    pairs = [(name, "base") for name in per_query if name != "base"]
    if "ours" in per_query and "peer" in per_query:
        pairs.append(("ours", "peer"))
    return {f"{a} vs {b}": paired_bootstrap(per_query[a], per_query[b]) for a, b in pairs}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beir-dir", default=str(DEFAULT_BEIR_DIR))
    p.add_argument("--split", default="test", help="qrels split the real queries come from (default test)")
    p.add_argument("--half-split-seed", type=int, help="cut qrels/test.tsv into seeded dev/test halves first")
    p.add_argument(
        "--seed", type=int, default=42, help="the product's seeds (questions, splits, mining, training)"
    )
    p.add_argument("--recipe", help="a named preset instead of the product's default (auto)")
    p.add_argument(
        "--selection-split",
        help="a qrels split (e.g. dev) the product chooses its recipe, checkpoint and merge on "
        "(--selection-split); default: none, held-out generated questions choose",
    )
    p.add_argument(
        "--teacher",
        help="the product's --teacher (e.g. all-mpnet-base-v2, the offline teacher); its zero-shot "
        "scores join the table",
    )
    p.add_argument("--config", action="append", help="extra run-config YAML (smoke tests only)")
    p.add_argument("--eval-seq-len", type=int, default=256, help="whole-document scoring: tokens kept")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work-dir", help="keep the product's home here (default: a temporary folder)")
    args = p.parse_args(argv)
    beir_dir = Path(args.beir_dir).resolve()
    tmp = tempfile.TemporaryDirectory(prefix="bench_product_")
    work = Path(args.work_dir) if args.work_dir else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    labelled = (
        half_split(beir_dir, work / "labelled", args.half_split_seed)
        if args.half_split_seed is not None
        else beir_dir
    )
    started = time.perf_counter()
    product = run_product(beir_dir, labelled, args.split, work, args)
    home = work / "home"
    recipe, model = latest_value(home, "training_recipe"), latest_value(home, "finetuned_model")
    models = {"base": model["base_model"], "ours": model["path"]}
    out: dict = {"product": product, "recipe": recipe, "timings_s": {"product run": product["wall_seconds"]}}
    if not args.no_peer:
        from embed_assets.recipe.settings import FinetunedModelSettings
        from embed_assets.training.trainer import TrainingConfig, train_bi_encoder

        trained = {"train", "val"} if model_refit(home) else {"train"}  # a refit trains validation too
        rows = peer_rows(home, recipe, trained)
        batch = FinetunedModelSettings().batch_size
        config = TrainingConfig(
            max_steps=model["steps"],
            batch_size=batch,
            mini_batch_size=batch,
            scale=PEER_SCALE,
            merge_weights=(0.0,),
            seed=args.seed,
        )
        t = time.perf_counter()
        train_bi_encoder(model["base_model"], rows, work / "peer", config)
        out["timings_s"]["peer training"] = round(time.perf_counter() - t, 1)
        out["peer"] = {
            "rows": rows.height,
            "steps": model["steps"],
            "scale": PEER_SCALE,
            "trained_splits": sorted(trained),
        }
        models = {"base": models["base"], "peer": str(work / "peer"), "ours": models["ours"]}
    t = time.perf_counter()
    scores = score_both_ways(models, home, beir_dir, labelled, args.split, args.eval_seq_len, product)
    out["timings_s"]["scoring"] = round(time.perf_counter() - t, 1)
    out["timings_s"]["total"] = round(time.perf_counter() - started, 1)
    passed = gate_passed(work / "product.log")
    out.update(
        dataset=beir_dir.name,
        split=args.split,
        queries=scores["queries"],
        config={
            "seed": args.seed,
            "recipe": args.recipe or "auto (product default)",
            "selection_split": args.selection_split,
            "half_split_seed": args.half_split_seed,
            "eval_seq_len": args.eval_seq_len,
            "teacher": args.teacher,
            "extra_config": args.config or [],
        },
        results={k: _public(scores["chunked"][k]) for k in models},
        results_whole_document={k: _public(v) for k, v in scores["whole_document"].items()},
        per_query_ndcg10={k: scores["chunked"][k]["per_query_ndcg10"] for k in models},
        significance_ndcg10=significance({k: scores["chunked"][k]["per_query_ndcg10"] for k in models}),
        significance_ndcg10_whole_document=significance(
            {k: v["per_query_ndcg10"] for k, v in scores["whole_document"].items()}
        ),
        synthetic={side: product["summary"].get(side, {}) for side in ("base", "fine_tuned")},
        synthetic_by_generator=product["summary"].get("synthetic_by_generator", {}),
        gate_passed=passed,
        # the teacher zero-shot, scored by the product beside base and fine-tuned (chunked scoring)
        teacher=(latest_value(home, "retrieval_eval") or {}).get("teacher"),
        # what a user of the product ends up with: the fine-tuned model, or the base when the gate blocked it
        shipped="ours" if passed else "base",
        command="python benchmarks/bench_nfcorpus.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
    )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{out['dataset']}-{args.split}-product" + (f"-seed{args.seed}" if args.seed != 42 else "")
    if args.recipe:
        stem += f"-{args.recipe}"
    if args.selection_split:
        stem += f"-chosen-on-{args.selection_split}"
    if args.teacher:
        stem += f"-teacher-{Path(args.teacher).name}"
    (out_dir / f"{stem}.json").write_text(json.dumps(out, indent=2, default=str))
    (out_dir / f"{stem}.md").write_text(report(out))
    print(report(out))
    tmp.cleanup()
    return out


def gate_passed(log: Path) -> bool:
    """The no-regression check's outcome, as ``embed-assets run`` printed it."""
    lines = [x for x in log.read_text().splitlines() if "check no_regression_vs_base" in x]
    return bool(lines) and lines[-1].rstrip().endswith("passed")


def gate_blocked(log: Path) -> bool:
    """Whether ``embed-assets run`` failed only because the no-regression gate blocked the export
    (every failed step is ``retrieval_eval`` failing its blocking check)."""
    lines = log.read_text().splitlines()
    failures = [x for x in lines if x.startswith("step ") and " failed: " in x]
    return (
        not gate_passed(log)
        and any(x.strip().startswith("check no_regression_vs_base") for x in lines)
        and bool(failures)
        and all(x.startswith("step retrieval_eval failed: DagsterAssetCheckFailedError") for x in failures)
    )


def model_refit(home: Path) -> bool:
    """Whether the product's model was refit on train + validation questions."""
    card = Path(latest_value(home, "finetuned_model")["path"]) / "embed_assets_training.json"
    return bool(json.loads(card.read_text())["result"].get("refit"))


def _public(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "per_query_ndcg10"}


def teacher_row(out: dict) -> list[str]:
    """The teacher's zero-shot line under the chunked table (the product's own scoring of it)."""
    scores = (out.get("teacher") or {}).get("labelled queries")
    if not scores:
        return []
    base = out["results"]["base"]
    cells = [f"{scores[k]:.4f} ({(scores[k] - base[k]) * 100:+.2f})" for k in METRICS]
    return [f"| teacher {out['teacher']['name']} (zero-shot) | " + " | ".join(cells) + " |"]


def report(out: dict) -> str:
    def table(results: dict) -> list[str]:
        base = results["base"]
        rows = ["| model | " + " | ".join(METRICS) + " |", "| --- |" + " --- |" * len(METRICS)]
        for name, m in results.items():
            cells = [
                f"{m[k]:.4f}" + ("" if name == "base" else f" ({(m[k] - base[k]) * 100:+.2f})")
                for k in METRICS
            ]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        return rows

    def bootstrap(sig: dict) -> list[str]:
        rows = ["| comparison | delta (points) | 95% CI | p |", "| --- | --- | --- | --- |"]
        for name, s in sig.items():
            rows.append(
                f"| {name} | {s['delta']:+.2f} | [{s['ci95_low']:+.2f}, {s['ci95_high']:+.2f}] | {s['p_text']} |"
            )
        return rows

    recipe = out["recipe"]
    cands = (
        ", ".join(f"{c['preset']} {c['val_ndcg10']}" for c in recipe.get("candidates", []))
        or recipe["selected_on"]
    )
    lines = [
        f"# {out['dataset']} ({out['split']}, {out['queries']} real queries): base vs peer vs the product",
        "",
        f"Command: `{out['command']}`",
        f"Product run: `{out['product']['command']}`: {out['product']['wall_seconds'] / 60:.1f} min, "
        f"peak RSS {out['product']['peak_rss_mb'] / 1024:.2f} GB; gate {'passed' if out['gate_passed'] else 'FAILED'}"
        + (
            "."
            if out["gate_passed"]
            else ": the export was blocked, so a user keeps the base model (a gain of 0)."
        ),
        f"Recipe: asked {recipe['requested']}, chose **{recipe['chosen']}** ({recipe['selected_on']}; "
        f"validation nDCG@10: {cands}).",
        "",
        "**Chunked** (the product's scoring: its chunks are searched, a document scores its best chunk), "
        "change against base in points:",
        "",
        *table(out["results"]),
        *teacher_row(out),
        "",
        *bootstrap(out["significance_ndcg10"]),
        "",
        f"**Whole documents** (title + text, first {out['config']['eval_seq_len']} tokens):",
        "",
        *table(out["results_whole_document"]),
        "",
        *bootstrap(out["significance_ndcg10_whole_document"]),
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in out["timings_s"].items()) + ".",
    ]
    if "peer" in out:
        lines.append(
            f"Peer: {out['peer']['rows']} unfiltered rows of the questions of documents in "
            f"{'/'.join(out['peer']['trained_splits'])}, {out['peer']['steps']} steps, scale {out['peer']['scale']}."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
