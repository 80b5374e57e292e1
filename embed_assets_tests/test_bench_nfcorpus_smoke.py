"""Smoke tests of the product's benchmark (``bench_nfcorpus.py``, which runs ``embed-assets run``)
and of ``summarise_seeds.py``, which pools its runs, on a tiny BEIR folder built from the
repository alone (``fixtures/tiny_beir``: 10 hand-written queries over ~40 pages of the default
corpus). The budget is tiny (a few training steps per model), so this checks the wiring, the
table and the files, not the scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embed_assets_tests.benchmark_scripts import load_benchmark

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / "data" / "corpus"
TINY_QUERIES = REPO / "embed_assets_tests" / "fixtures" / "tiny_beir"
METRICS = ("NDCG@10", "Recall@10", "Recall@100", "MAP@10")


def _tiny_beir(dst: Path, n_docs: int = 40, max_chars: int = 1200) -> Path:
    """A BEIR folder from the repository alone: the 10 hand-written queries of
    ``fixtures/tiny_beir`` over their judged pages of the default corpus, filled to ``n_docs``
    with other pages (each cut to ``max_chars``), plus the awkward documents real BEIR folders hold."""
    qrels = [line.split("\t") for line in (TINY_QUERIES / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    judged = list(dict.fromkeys(doc for _, doc, _ in qrels))
    others = sorted(p.name for p in DEFAULT_CORPUS.glob("*.md") if p.name not in judged)
    docs = {}
    for name in [*judged, *others][: max(n_docs, len(judged))]:
        title, _, body = (DEFAULT_CORPUS / name).read_text(encoding="utf-8").partition("\n")
        docs[name] = json.dumps(
            {"_id": name, "title": title.lstrip("# ").strip(), "text": body.strip()[:max_chars]}
        )
    # What real BEIR folders hold besides (Cranfield has the first two): documents with no text at
    # all, one of them judged relevant; the same text under another id; no title field; one word;
    # a document far longer than any sequence length.
    first = json.loads(docs[judged[0]])
    awkward = [
        {"_id": "EMPTY-1", "title": "", "text": ""},
        {"_id": "EMPTY-2", "title": "", "text": ""},
        dict(first, _id="SAME-TEXT"),
        {"_id": "NO-TITLE", "text": "Checkpoints flush dirty pages and bound crash recovery time."},
        {"_id": "ONE-WORD", "title": "", "text": "Vacuum"},
        {
            "_id": "LONG",
            "title": "A long page",
            "text": " ".join(["WAL records describe every change."] * 800),
        },
    ]
    (dst / "qrels").mkdir(parents=True)
    (dst / "corpus.jsonl").write_text(
        "".join(d + "\n" for d in docs.values()) + "".join(json.dumps(d) + "\n" for d in awkward),
        encoding="utf-8",
    )
    (dst / "queries.jsonl").write_bytes((TINY_QUERIES / "queries.jsonl").read_bytes())
    first_query = qrels[0][0]
    (dst / "qrels" / "test.tsv").write_text(
        (TINY_QUERIES / "qrels" / "test.tsv").read_text() + f"{first_query}\tEMPTY-1\t1\n", encoding="utf-8"
    )
    return dst


TINY_BUDGET = """
ops:
  qa_splits: {config: {val_fraction: 0.2, test_fraction: 0.2}}
  training_recipe:
    config:
      training_examples: {min_batches: 1}
      finetuned_model: {batch_size: 8, max_steps: 3, val_distractors: 20}
  retrieval_eval: {config: {tolerance_points: 100.0}}
"""


def test_product_bench_runs_the_product_and_scores_both_ways(tmp_path):
    """``bench_nfcorpus.py`` runs ``embed-assets run`` (recipe auto) on the BEIR folder with its
    queries as labelled queries, trains the peer on the same questions, and scores base, peer and
    ours chunked and by whole document; its chunked scores of base and ours are the product's own."""
    bench = load_benchmark("bench_nfcorpus")
    beir = _tiny_beir(tmp_path / "nftiny")
    budget = tmp_path / "tiny.yaml"
    budget.write_text(TINY_BUDGET)
    out_dir = tmp_path / "results"
    args = [
        "--beir-dir",
        str(beir),
        "--out-dir",
        str(out_dir),
        "--config",
        str(budget),
        "--half-split-seed",
        "3",
        "--work-dir",
        str(tmp_path / "work"),
    ]
    out = bench.main(args)
    assert out["recipe"]["requested"] == "auto" and out["recipe"]["chosen"] in (
        "identifier-manual",
        "titled-documents",
    )
    assert len(out["recipe"]["candidates"]) == 2
    assert out["queries"] == 5  # the half of the 10 judged queries that is "test"
    for scoring in ("results", "results_whole_document"):
        assert set(out[scoring]) == {"base", "peer", "ours"}
        for name, metrics in out[scoring].items():
            assert all(0.0 <= metrics[m] <= 1.0 for m in METRICS), (scoring, name, metrics)
    # Base and ours, chunked, are the product's own figures; the peer is scored the same way here.
    assert out["results"]["ours"]["NDCG@10"] == pytest.approx(
        json.loads((tmp_path / "results" / "nftiny-test-product.json").read_text())["product"]["summary"][
            "labelled"
        ]["fine_tuned"]["NDCG@10"],
        abs=1e-4,
    )
    assert set(out["per_query_ndcg10"]["peer"]) == set(out["per_query_ndcg10"]["ours"])
    assert out["peer"]["rows"] > 0 and out["peer"]["steps"] == 3
    assert set(out["significance_ndcg10"]) == {"peer vs base", "ours vs base", "ours vs peer"}
    assert out["product"]["peak_rss_mb"] > 0 and out["product"]["wall_seconds"] > 0
    table = (out_dir / "nftiny-test-product.md").read_text()
    assert "| ours |" in table and "**Whole documents**" in table and "embed_assets run" in table
    assert json.loads((out_dir / "nftiny-test-product.json").read_text())["results"] == out["results"]
    # summarise_seeds.py pools the product bench's records too (both scorings, the recipe per run):
    # here the record and the same record labelled with another seed, so every spread is 0.
    record = json.loads((out_dir / "nftiny-test-product.json").read_text())
    (out_dir / "nftiny-test-product-seed7.json").write_text(
        json.dumps({**record, "config": {**record["config"], "seed": 7}})
    )
    pooled = load_benchmark("summarise_seeds").main(
        [str(out_dir / "nftiny-test-product.json"), str(out_dir / "nftiny-test-product-seed7.json")]
    )
    assert pooled["recipes"] == [record["recipe"]["chosen"]] * 2
    for scoring in ("results", "results_whole_document"):
        ours = pooled[scoring]["ours"]["NDCG@10"]
        assert ours["mean"] == pytest.approx(record[scoring]["ours"]["NDCG@10"], abs=1e-4) and ours["sd"] == 0
    assert "Whole documents" in (out_dir / "nftiny-test-product-seeds.md").read_text()
    # The base model's whole-document vectors do not depend on the seed: kept in the home for the
    # next run (another seed) to read instead of encoding the collection again.
    import lancedb

    kept = [
        t for t in lancedb.connect(str(tmp_path / "work" / "home" / "lancedb")).table_names() if "_whole" in t
    ]
    assert len(kept) == 1
    assert lancedb.connect(str(tmp_path / "work" / "home" / "lancedb")).open_table(kept[0]).count_rows() > 40


# A learning rate that wrecks the model, no merge back towards the base and no tolerance: the gate blocks.
WRECKING_BUDGET = """
ops:
  qa_splits: {config: {val_fraction: 0.2, test_fraction: 0.2}}
  training_recipe:
    config:
      training_examples: {min_batches: 1}
      finetuned_model: {batch_size: 8, max_steps: 3, val_distractors: 20, learning_rate: 0.5,
                        warmup_ratio: 0.0, merge_weights: [0.0]}
"""


def test_a_run_the_gate_blocks_is_a_result_and_ships_the_base(tmp_path):
    """When the no-regression gate blocks the export, ``embed-assets run`` exits 1 but the run is
    a product outcome: the bench scores it, records the gate and that the user keeps the base
    model, and pooling counts the base model's scores as that seed's ``shipped`` result."""
    bench = load_benchmark("bench_nfcorpus")
    beir = _tiny_beir(tmp_path / "nftiny")
    budget = tmp_path / "wreck.yaml"
    budget.write_text(WRECKING_BUDGET)
    out_dir = tmp_path / "results"
    args = ["--beir-dir", str(beir), "--out-dir", str(out_dir), "--config", str(budget), "--no-peer"]
    out = bench.main([*args, "--half-split-seed", "3", "--work-dir", str(tmp_path / "work")])
    assert out["gate_passed"] is False and out["shipped"] == "base"
    assert bench.gate_blocked(tmp_path / "work" / "product.log")
    assert (
        "the export was blocked, so a user keeps the base model"
        in (out_dir / "nftiny-test-product.md").read_text()
    )
    assert set(out["results"]) == {"base", "ours"}  # the blocked model is still scored

    record = json.loads((out_dir / "nftiny-test-product.json").read_text())
    (out_dir / "nftiny-test-product-seed7.json").write_text(
        json.dumps({**record, "config": {**record["config"], "seed": 7}})
    )
    pooled = load_benchmark("summarise_seeds").main(
        [str(out_dir / "nftiny-test-product.json"), str(out_dir / "nftiny-test-product-seed7.json")]
    )
    assert pooled["gates"] == [False, False]
    assert pooled["results"]["shipped"] == pooled["results"]["base"]
    assert pooled["significance_ndcg10"]["shipped vs base"]["delta"] == 0
    assert "blocked the export" in (out_dir / "nftiny-test-product-seeds.md").read_text()

    # Any other failure still stops the bench: a log whose failed step is not the gate's.
    log = tmp_path / "other.log"
    log.write_text(
        "  check no_regression_vs_base        FAILED\nstep finetuned_model failed: ValueError: x\n"
    )
    assert not bench.gate_blocked(log)
