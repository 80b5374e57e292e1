"""``embed-assets run`` in-process: a JSON Lines corpus, labelled queries, the printed tables."""

import argparse
import json

import yaml
from test_pipeline_e2e import MINI_LABELLED, tiny_run_config

from embed_assets.cli import build_run_config, main
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
    # The YAML asks for auto; the --recipe flag below names a preset, and wins.
    config.write_text(yaml.safe_dump({"ops": ops, "resources": {"recipe": {"config": {"preset": "auto"}}}}))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    home = tmp_path / "home"

    args = ["run", "--corpus-jsonl", str(corpus), "--labelled-queries", str(MINI_LABELLED)]
    args += ["--config", str(config), "--home", str(home)]
    code = main([*args, "--labelled-split", "test", "--recipe", "identifier-manual"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "Base vs fine-tuned on 7 labelled queries" in out
    summary = json.loads((home / "last_run.json").read_text())
    assert summary["labelled"]["queries"] == 7
    assert summary["labelled"]["skipped"]["judgment_unknown_document"] == 2
    assert set(summary["stages"]) >= {"source_documents", "retrieval_eval", "onnx_model"}
    assert 0.0 < summary["labelled"]["base"]["NDCG@10"] <= 1.0
    recipe_dir = home / "assets" / "training_recipe"
    recipe = json.loads(
        (recipe_dir / json.loads((recipe_dir / "latest.json").read_text())["file"]).read_text()
    )
    assert (recipe["requested"], recipe["chosen"]) == ("identifier-manual", "identifier-manual")
    assert recipe["selected_on"] == "named by the user" and recipe["candidates"] == []

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


def test_flags_override_the_yaml_config_recipe_included(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "resources": {"recipe": {"config": {"preset": "auto", "selection_steps": 3}}},
                "ops": {"finetuned_model": {"config": {"max_steps": 9, "seed": 5}}},
            }
        )
    )
    args = argparse.Namespace(
        config=str(config),
        corpus_dir=None,
        corpus_jsonl="docs.jsonl",
        labelled_queries=None,
        labelled_split=None,
        selection_split="dev",
        max_steps=4,
        recipe="titled-documents",
    )
    run_config = build_run_config(args)
    # A flag replaces its one field; what the YAML sets beside it stays.
    assert run_config["resources"]["recipe"]["config"] == {"preset": "titled-documents", "selection_steps": 3}
    # the YAML's old layout (settings on finetuned_model) is read into training_recipe's
    assert run_config["ops"]["training_recipe"]["config"]["finetuned_model"] == {
        "max_steps": 4,
        "seed": 5,
        "selection_queries_split": "dev",
    }
    assert "finetuned_model" not in run_config["ops"]
    assert run_config["ops"]["source_documents"]["config"] == {"corpus_jsonl": "docs.jsonl"}
    args.recipe = None  # no flag: the YAML's recipe stands
    assert build_run_config(args)["resources"]["recipe"]["config"]["preset"] == "auto"


def test_a_selection_split_is_a_split_of_the_labelled_queries_folder(tmp_path):
    """--selection-split takes its folder from --labelled-queries (which wins over the YAML's),
    else from the YAML's selection_queries_dir, else from the YAML's labelled_queries_dir."""
    config = tmp_path / "run.yaml"
    recipe = {"selection_queries_dir": "yaml-selection"}
    config.write_text(
        yaml.safe_dump(
            {
                "ops": {
                    "training_recipe": {"config": recipe},
                    "retrieval_eval": {"config": {"labelled_queries_dir": "yaml-labelled"}},
                }
            }
        )
    )
    flags = dict(corpus_dir=None, corpus_jsonl=None, labelled_split=None, max_steps=None, recipe=None)
    args = argparse.Namespace(config=str(config), labelled_queries=None, selection_split="dev", **flags)

    def folder() -> str | None:
        recipe = build_run_config(args)["ops"].get("training_recipe", {"config": {}})
        return recipe["config"].get("selection_queries_dir")

    assert folder() == "yaml-selection"
    args.labelled_queries = "flag-labelled"
    assert folder() == "flag-labelled"
    recipe.pop("selection_queries_dir")
    config.write_text(
        yaml.safe_dump({"ops": {"retrieval_eval": {"config": {"labelled_queries_dir": "yaml-labelled"}}}})
    )
    args.labelled_queries = None
    assert folder() == "yaml-labelled"
    args.selection_split = None  # no split, no folder
    assert folder() is None
