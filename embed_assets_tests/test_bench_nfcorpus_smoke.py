"""Smoke tests of the benchmark scripts on a tiny BEIR folder cut from NFCorpus: the product's
benchmark (``bench_nfcorpus.py``, which runs ``embed-assets run``) and the research harness
(``explore_core_recipe.py``).

The folder is built in ``tmp_path`` from ``../shared/benchmarks/nfcorpus`` (10 test
queries with some of their judged documents, ~40 documents in all); the test is skipped
where that shared folder is missing. The budget is tiny (2 training steps per model), so
this checks the wiring, the table and the files, not the scores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from embed_assets_tests.benchmark_scripts import load_benchmark

REPO = Path(__file__).resolve().parents[1]
NFCORPUS = REPO.parent / "shared" / "benchmarks" / "nfcorpus"
DEFAULT_CORPUS = REPO / "data" / "corpus"
TINY_QUERIES = REPO / "embed_assets_tests" / "fixtures" / "tiny_beir"
METRICS = ("NDCG@10", "Recall@10", "Recall@100", "MAP@10")


def _load_bench():
    return load_benchmark("explore_core_recipe")


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
  training_examples: {config: {min_batches: 1}}
  finetuned_model: {config: {batch_size: 8, max_steps: 3, val_distractors: 20}}
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
  training_examples: {config: {min_batches: 1}}
  finetuned_model: {config: {batch_size: 8, max_steps: 3, val_distractors: 20, learning_rate: 0.5,
                             warmup_ratio: 0.0, merge_weights: [0.0]}}
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


@pytest.mark.skipif(not NFCORPUS.exists(), reason="../shared/benchmarks/nfcorpus is not available")
def test_bench_nfcorpus_smoke(tmp_path):
    bench = _load_bench()
    beir = _tiny_beir(tmp_path / "nftiny")
    out_dir = tmp_path / "results"
    out = bench.main(
        [
            "--beir-dir",
            str(beir),
            "--split",
            "test",
            "--out-dir",
            str(out_dir),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--mini-batch-size",
            "2",
            "--train-seq-len",
            "64",
            "--eval-seq-len",
            "128",
            "--val-queries",
            "8",
            "--val-corpus",
            "20",
            "--roundtrip-top-k",
            "20",
            "--negatives",
            "1",
            "--merge-weights",
            "0.0,0.5",
            "--refit",
        ]
    )
    assert set(out["results"]) == {"base", "peer", "ours"}
    for name, metrics in out["results"].items():
        for m in METRICS:
            assert 0.0 <= metrics[m] <= 1.0, (name, m, metrics[m])
    assert out["llm_calls"] == 0
    assert out["peak_rss_mb"] > 0
    # The refit retrains on the validation documents' kept pairs as well, for the selected step count.
    assert out["train_rows"]["ours_refit"] > out["train_rows"]["ours"]
    assert out["ours_training"]["refit"]["steps"] == out["ours_training"]["steps"]
    assert {"index (base embeddings)", "train ours", "refit ours", "train peer", "eval ours", "total"} <= set(
        out["timings_s"]
    )

    md = out_dir / "nftiny-test.md"
    js = out_dir / "nftiny-test.json"
    assert md.exists() and js.exists()
    table = md.read_text()
    for row in ("| base |", "| peer |", "| ours |"):
        assert row in table
    assert "then refit from the base" in table
    for m in METRICS:
        assert m in table
    assert "explore_core_recipe.py" in table  # the exact command line
    record = json.loads(js.read_text())
    assert record["results"] == out["results"]
    assert record["config"]["split"] == "test"
    # Significance of every comparison, from per-query nDCG@10 of all 10 queries.
    assert set(record["significance_ndcg10"]) == {"peer vs base", "ours vs base", "ours vs peer"}
    assert all(len(v) == 10 for v in record["per_query_ndcg10"].values())
    assert "Paired bootstrap" in table


@pytest.mark.skipif(not NFCORPUS.exists(), reason="../shared/benchmarks/nfcorpus is not available")
def test_bench_nfcorpus_with_an_llm_generator_on_loopback(tmp_path, server, monkeypatch):
    """``--generator litellm`` against the scripted OpenAI-compatible server: questions and
    multi-hop questions come from the endpoint, calls are counted, the key stays out of the files."""
    from llm_fault_server import TEST_KEY

    monkeypatch.setenv("BENCH_TEST_KEY", TEST_KEY)
    bench = _load_bench()
    beir = _tiny_beir(tmp_path / "nftiny")
    out_dir = tmp_path / "results"
    args = ["--beir-dir", str(beir), "--out-dir", str(out_dir), "--work-dir", str(tmp_path / "work")]
    args += ["--generator", "litellm", "--llm-model", "openai/test-model", "--api-base", server.url]
    args += ["--api-key-env", "BENCH_TEST_KEY", "--questions-per-chunk", "2", "--no-peer", "--no-refit"]
    args += ["--max-steps", "2", "--batch-size", "4", "--mini-batch-size", "4", "--train-seq-len", "64"]
    args += ["--eval-seq-len", "64", "--roundtrip-top-k", "40", "--val-queries", "8", "--val-corpus", "20"]
    out = bench.main(args)
    assert out["llm_calls"] > 0 and out["llm_calls"] == server.count - 1  # all but the preflight
    assert out["generation"]["generator"].startswith("llm")
    assert out["generation"]["generated_multi_hop"] > 0
    assert set(out["results"]) == {"base", "ours"}
    assert "refit ours" not in out["timings_s"] and not out["ours_training"].get("refit")
    assert (out_dir / "nftiny-test-litellm-norefit.json").exists()
    written = "".join(p.read_text() for p in out_dir.iterdir())
    assert TEST_KEY not in written
    # A second run over the same work folder answers every generation from the cache.
    calls = server.count
    again = bench.main(args)
    assert server.count == calls and again["generation"]["cache_hits"] > 0


@pytest.mark.skipif(not NFCORPUS.exists(), reason="../shared/benchmarks/nfcorpus is not available")
def test_seeded_runs_with_guided_training_pool_into_one_table(tmp_path):
    """Two ``--guided`` runs that differ only in ``--seed`` write separate files and pool into
    seed means, spreads and a seed-averaged bootstrap; runs that differ otherwise are refused."""
    bench, summarise = _load_bench(), load_benchmark("summarise_seeds")
    beir = _tiny_beir(tmp_path / "nftiny")
    out_dir = tmp_path / "results"
    args = ["--beir-dir", str(beir), "--out-dir", str(out_dir), "--guided", "--max-steps", "2"]
    args += ["--batch-size", "4", "--mini-batch-size", "4", "--train-seq-len", "64", "--eval-seq-len", "64"]
    args += ["--roundtrip-top-k", "40", "--val-queries", "8", "--val-corpus", "20", "--learning-rate", "1e-4"]
    runs = [bench.main([*args, "--seed", str(seed)]) for seed in (42, 7)]
    assert all(r["config"]["guided_in_batch"] for r in runs)
    files = [out_dir / "nftiny-test.json", out_dir / "nftiny-test-seed7.json"]
    assert all(f.exists() for f in files)

    pooled = summarise.main([str(f) for f in files])
    ours = pooled["results"]["ours"]["NDCG@10"]
    assert ours["per_seed"] == [r["results"]["ours"]["NDCG@10"] for r in runs]
    assert ours["mean"] == pytest.approx(sum(ours["per_seed"]) / 2, abs=1e-4)
    assert set(pooled["significance_ndcg10"]) == {"peer vs base", "ours vs base", "ours vs peer"}
    assert pooled["significance_ndcg10"]["ours vs base"]["queries"] == 10
    table = (out_dir / "nftiny-test-seeds.md").read_text()
    assert "mean over seeds 42, 7" in table and "| ours |" in table

    other = json.loads(files[1].read_text())
    other["config"]["scale"] = 99.0
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="scale"):
        summarise.main([str(files[0]), str(tmp_path / "other.json")])


@pytest.mark.skipif(not NFCORPUS.exists(), reason="../shared/benchmarks/nfcorpus is not available")
def test_probe_trains_on_one_split_of_real_queries_and_scores_on_another(tmp_path):
    probe = load_benchmark("probe_real_query_ceiling")
    beir = _tiny_beir(tmp_path / "nftiny")
    # Half of the tiny folder's judged queries become a "dev" split that trains the probe.
    lines = (beir / "qrels" / "test.tsv").read_text().splitlines()
    qids = sorted({line.split("\t")[0] for line in lines[1:]})
    train_q = set(qids[:5])
    (beir / "qrels" / "dev.tsv").write_text(
        "\n".join([lines[0], *(x for x in lines[1:] if x.split("\t")[0] in train_q)]) + "\n"
    )
    (beir / "qrels" / "test.tsv").write_text(
        "\n".join([lines[0], *(x for x in lines[1:] if x.split("\t")[0] not in train_q)]) + "\n"
    )
    out_dir = tmp_path / "results"
    args = ["--beir-dir", str(beir), "--out-dir", str(out_dir), "--max-steps", "2", "--batch-size", "4"]
    out = probe.main(args)

    # Every judged (dev query, document) pair is a training row, but for the judged document
    # without text (nothing to train on); the test queries only score.
    assert out["train_queries"] == 5
    assert out["train_steps"] == 2
    judged = [x.split("\t") for x in lines[1:] if x.split("\t")[0] in train_q]
    assert [c for _, c, _ in judged if c.startswith("EMPTY")] == ["EMPTY-1"]
    assert out["train_rows"] == len(judged) - 1
    assert out["significance_ndcg10"]["probe vs base"]["queries"] == len(qids) - 5
    for name in ("base", "probe"):
        assert all(0.0 <= out["results"][name][m] <= 1.0 for m in METRICS)
    assert out["deltas_points_vs_base"]["NDCG@10"] == pytest.approx(
        (out["results"]["probe"]["NDCG@10"] - out["results"]["base"]["NDCG@10"]) * 100, abs=0.01
    )
    md = (out_dir / "nftiny-probe-dev-queries-test-2steps.md").read_text()
    assert "| probe |" in md and "not a product result" in md
    assert (
        json.loads((out_dir / "nftiny-probe-dev-queries-test-2steps.json").read_text())["results"]
        == out["results"]
    )

    # Training and scoring on the same split is refused.
    with pytest.raises(SystemExit):
        probe.main([*args, "--train-split", "test"])


def test_probe_rows_are_the_judged_pairs_at_or_above_the_grade():
    probe = load_benchmark("probe_real_query_ceiling")
    queries = {"q1": "statins and breast cancer", "q2": "eye parasites"}
    corpus = {"d1": "statin study", "d2": "tamoxifen trial", "d3": "acanthamoeba keratitis"}
    qrels = {"q1": {"d1": 2, "d2": 1}, "q2": {"d3": 1, "d9": 2}, "q3": {"d1": 2}}
    rows = probe.real_query_rows(queries, qrels, corpus, min_grade=1)
    # d9 is not in the corpus and q3 has no text: both are left out.
    assert rows.select("qa_id", "positive_id").rows() == [("q1", "d1"), ("q1", "d2"), ("q2", "d3")]
    assert rows["anchor"][2] == "eye parasites" and rows["positive"][2] == "acanthamoeba keratitis"
    direct = probe.real_query_rows(queries, qrels, corpus, min_grade=2)
    assert direct.select("qa_id", "positive_id").rows() == [("q1", "d1")]
    with pytest.raises(ValueError, match="grade >= 3"):
        probe.real_query_rows(queries, qrels, corpus, min_grade=3)
