"""``embed-assets run`` in-process: a JSON Lines corpus, labelled queries, the printed tables."""

import json

import yaml
from test_pipeline_e2e import MINI_LABELLED, tiny_run_config

from embed_assets.cli import main
from embed_assets.ingest.documents import read_corpus


def test_run_on_a_jsonl_corpus_scores_labelled_queries(mini_corpus_dir, tmp_path, monkeypatch, capsys):
    # The mini corpus as one JSON Lines file whose ids are the file names the labelled set uses.
    corpus = tmp_path / "corpus.jsonl"
    docs = read_corpus(mini_corpus_dir).documents
    corpus.write_text(
        "".join(
            json.dumps({"_id": d["doc_path"], "title": d["title"], "text": d["text"]}) + "\n"
            for d in docs.iter_rows(named=True)
        )
    )
    ops = tiny_run_config()["ops"]
    del ops["source_documents"]
    # The wiring is under test here, not the gain of a 6-step run on 7 queries (the gate has its
    # own tests in test_pipeline_e2e.py): a regression must not stop the run.
    ops["retrieval_eval"] = {"config": {"tolerance_points": 100.0}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"ops": ops}))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    home = tmp_path / "home"

    args = ["run", "--corpus-jsonl", str(corpus), "--labelled-queries", str(MINI_LABELLED)]
    args += ["--config", str(config), "--home", str(home)]
    code = main([*args, "--labelled-split", "test"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "Base vs fine-tuned on 7 labelled queries" in out
    summary = json.loads((home / "last_run.json").read_text())
    assert summary["labelled"]["queries"] == 7
    assert summary["labelled"]["skipped"]["judgment_unknown_document"] == 2
    assert set(summary["stages"]) >= {"source_documents", "retrieval_eval", "onnx_model"}
    assert 0.0 < summary["labelled"]["base"]["NDCG@10"] <= 1.0

    # Part of the graph: only the evaluation runs again, on what the first run left in --home.
    # The JSONL source in the arguments configures an asset outside the selection: it is left out.
    code = main([*args, "--select", "retrieval_eval"])
    out = capsys.readouterr().out
    assert code == 0, out
    rerun = json.loads((home / "last_run.json").read_text())
    assert set(rerun["stages"]) == {"retrieval_eval"}
    assert rerun["labelled"] == summary["labelled"]  # same models, same queries: same figures
    assert main(["run", "--home", str(home), "--select", "no_such_asset*"]) == 2
    assert "no_such_asset" in capsys.readouterr().err
