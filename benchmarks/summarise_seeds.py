"""Pool several ``bench_nfcorpus.py`` runs that differ only in ``--seed``.

One training run's nDCG@10 moves with its seed (data order, dropout, validation split) as
well as with the query sample. This averages each query's nDCG@10 over the seeds before the
paired bootstrap, so the comparison reflects the recipe rather than one lucky or unlucky run,
and reports the per-seed spread next to it:

    python benchmarks/bench_nfcorpus.py --seed 1 --work-dir W
    python benchmarks/bench_nfcorpus.py --seed 2 --work-dir W
    python benchmarks/bench_nfcorpus.py --seed 1234 --work-dir W
    python benchmarks/summarise_seeds.py benchmarks/results/nfcorpus-test-product-seed1.json \
        benchmarks/results/nfcorpus-test-product-seed2.json \
        benchmarks/results/nfcorpus-test-product-seed1234.json

The product bench's ``<dataset>-<split>-product[-seedN].json`` files pool with their
whole-document scores (means and spreads), the recipe ``auto`` chose in each run and its gate. They
add a model ``shipped``: what a user ends up with in each run, the fine-tuned model when the
no-regression gate passed and the base model when it blocked the export. Records of the former
research harness (``<dataset>-<split>.json``, in git history) pool too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "benchmarks"))

from bench_nfcorpus import significance  # noqa: E402

# Settings that must agree across the pooled runs (everything but the seed and where files go).
IGNORED = {"seed", "out_dir", "work_dir"}


def pool(records: list[dict]) -> dict:
    """Mean and spread per model and metric, and seed-averaged paired bootstraps of nDCG@10."""
    if len(records) < 2:
        raise ValueError("pool needs at least two runs")

    def settings(record: dict) -> dict:
        # The same data folder may be reached by another path (a clone beside a link to it).
        config = {k: v for k, v in record["config"].items() if k not in IGNORED}
        if "beir_dir" in config:  # the research harness records it; the product bench its dataset
            config["beir_dir"] = os.path.realpath(config["beir_dir"])
        return config

    first = settings(records[0])
    for r in records[1:]:
        other = settings(r)
        diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if diff:
            raise ValueError(f"runs differ in more than the seed: {diff}")
    seeds = [r["config"]["seed"] for r in records]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the same seed appears twice: {seeds}")
    if len({r["dataset"] for r in records}) != 1:
        raise ValueError(f"runs on different datasets: {sorted({r['dataset'] for r in records})}")
    if all("shipped" in r for r in records):
        records = [_with_shipped(r) for r in records]
    models = list(records[0]["results"])
    averaged = {}
    for m in models:
        queries = set.intersection(*(set(r["per_query_ndcg10"][m]) for r in records))
        averaged[m] = {q: statistics.mean(r["per_query_ndcg10"][m][q] for r in records) for q in queries}
    pooled = {
        "dataset": records[0]["dataset"],
        "split": records[0]["split"],
        "seeds": seeds,
        "commands": [r["command"] for r in records],
        "results": _mean_and_spread(records, "results"),
        "significance_ndcg10": significance(averaged),  # the bench's own comparisons, on seed means
    }
    # The product bench also scores whole documents and records the recipe `auto` chose per run.
    if all("results_whole_document" in r for r in records):
        pooled["results_whole_document"] = _mean_and_spread(records, "results_whole_document")
    if all("recipe" in r for r in records):
        pooled["recipes"] = [r["recipe"]["chosen"] for r in records]
    if all("gate_passed" in r for r in records):
        pooled["gates"] = [bool(r["gate_passed"]) for r in records]
    return pooled


def _with_shipped(record: dict) -> dict:
    """``record`` with a model ``shipped``: the one its run left the user (see the module doc)."""
    out = dict(record)
    for key in ("results", "results_whole_document", "per_query_ndcg10"):
        if key in record:
            out[key] = {**record[key], "shipped": record[key][record["shipped"]]}
    return out


def _mean_and_spread(records: list[dict], key: str) -> dict:
    """Mean, standard deviation and per-seed values of every model's metrics under ``key``."""
    models = list(records[0][key])
    return {
        m: {
            k: {
                "mean": round(statistics.mean(r[key][m][k] for r in records), 4),
                "sd": round(statistics.stdev(r[key][m][k] for r in records), 4),
                "per_seed": [r[key][m][k] for r in records],
            }
            for k in records[0][key][m]
        }
        for m in models
    }


def _table(results: dict) -> list[str]:
    """Mean ± sd per model and metric, with the change of the mean against base."""
    lines = [
        "| model | " + " | ".join(next(iter(results.values()))) + " |",
        "| --- |" + " --- |" * len(next(iter(results.values()))),
    ]
    base = results.get("base")
    for model, row in results.items():
        cells = []
        for metric, v in row.items():
            cell = f"{v['mean']:.4f} ± {v['sd']:.4f}"
            if base is not None and model != "base":
                cell += f" ({(v['mean'] - base[metric]['mean']) * 100:+.2f})"
            cells.append(cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def markdown(pooled: dict) -> str:
    seeds = pooled["seeds"]
    lines = [
        f"# {pooled['dataset']} ({pooled['split']}): mean over seeds {', '.join(map(str, seeds))}",
        "",
        *_table(pooled["results"]),
        "",
        "(mean ± standard deviation over the seeds; in brackets: change of the mean against base, points ×100)",
        "",
        "Paired bootstrap of nDCG@10 over the queries, each query's score averaged over the seeds:",
        "",
        "| comparison | delta (points) | 95% CI | p (two-sided) |",
        "| --- | --- | --- | --- |",
    ]
    for name, s in pooled["significance_ndcg10"].items():
        lines.append(
            f"| {name} | {s['delta']:+.2f} | [{s['ci95_low']:+.2f}, {s['ci95_high']:+.2f}] | {s['p_two_sided']} |"
        )
    if "results_whole_document" in pooled:
        lines += ["", "Whole documents:", "", *_table(pooled["results_whole_document"])]
    recipes, gates = pooled.get("recipes"), pooled.get("gates")
    extra = (["recipe chosen"] if recipes else []) + (["gate"] if gates else [])
    lines += ["", "Per-seed nDCG@10:", ""]
    lines.append("| " + " | ".join(["seed", *pooled["results"], *extra]) + " |")
    lines.append("| --- |" + " --- |" * (len(pooled["results"]) + len(extra)))
    for i, seed in enumerate(seeds):
        cells = [f"{row['NDCG@10']['per_seed'][i]:.4f}" for row in pooled["results"].values()]
        cells += [recipes[i]] if recipes else []
        cells += ["passed" if gates[i] else "blocked the export"] if gates else []
        lines.append("| " + " | ".join([str(seed), *cells]) + " |")
    lines += ["", "Commands:", "", *(f"- `{c}`" for c in pooled["commands"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="bench_nfcorpus.py result .json files, one per seed")
    p.add_argument("--out", default=None, help="markdown file (default: beside the first input)")
    a = p.parse_args(argv)
    records = [json.loads(Path(f).read_text(encoding="utf-8")) for f in a.results]
    pooled = pool(records)
    out = (
        Path(a.out)
        if a.out
        else Path(a.results[0]).with_name(
            f"{pooled['dataset']}-{pooled['split']}{'-product' if 'recipes' in pooled else ''}-seeds.md"
        )
    )
    out.write_text(markdown(pooled), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(pooled, indent=2), encoding="utf-8")
    print(markdown(pooled))
    return pooled


if __name__ == "__main__":
    main()
