"""Lineage you can audit: versions from full content and config, immutable content-addressed
artifacts, code versions, and ``embed-assets audit`` / ``gc`` on a real Dagster instance.

Two runs share one artifact home and one Dagster instance; the second changes the mining
config (other negatives) and the split seed (another test set). Every collision the first
version of the pipeline had would show here: one model folder for both, one BEIR folder for
both test sets, one data version for different negatives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from test_pipeline_e2e import tiny_run_config

from embed_assets.cli import main
from embed_assets.defs.definitions import all_assets, build_resources, defs
from embed_assets.lineage import data_version, file_sha256
from embed_assets.training.trainer import CARD_HEADING, _write_card

UP_TO_EVAL = "*retrieval_eval"  # the ONNX export adds nothing to what is tested here


def _run(
    home: Path, instance: dg.DagsterInstance, recipe: dict | None = None, **ops
) -> dg.ExecuteInJobResult:
    config = tiny_run_config()
    if recipe:
        config["resources"] = {"recipe": {"config": recipe}}
    for asset, fields in ops.items():
        config["ops"].setdefault(asset, {"config": {}})["config"].update(fields)
    config["ops"]["retrieval_eval"] = {"config": {"tolerance_points": 100.0}}  # the wiring, not the gain
    result = dg.materialize(
        all_assets,
        selection=UP_TO_EVAL,
        run_config=config,
        resources=build_resources(str(home)),
        instance=instance,
    )
    assert result.success
    return result


def _mats(result) -> dict[str, dg.AssetMaterialization]:
    return {
        e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
    }


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage")
    dagster_home = root / "dagster_home"
    dagster_home.mkdir()
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    try:
        instance = dg.DagsterInstance.get()
        home = root / "home"
        first = _run(home, instance)
        second = _run(
            home,
            instance,
            recipe={"preset": "auto", "selection_steps": 3},
            mined_negatives={"num_negatives": 2},
            qa_splits={"seed": 7},
        )
        yield home, instance, first, second
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old


def test_versions_come_from_full_content_and_config():
    frame = pl.DataFrame({"qa_id": ["a", "b"], "kept": [True, False]})
    flipped = frame.with_columns(~pl.col("kept"))
    assert data_version(frame) != data_version(flipped)  # the ids alone are the same
    assert data_version(frame, {"seed": 1}) != data_version(frame, {"seed": 2})
    assert data_version(frame, {"seed": 1}) == data_version(frame.clone(), {"seed": 1})
    assert data_version(pl.concat([frame.head(1), frame.tail(1)]), None) == data_version(frame, None)


def test_every_asset_declares_a_code_version():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).code_version, key.to_user_string()


def test_no_two_different_values_share_a_version(two_runs):
    _, _, first, second = two_runs
    a, b = _mats(first), _mats(second)
    # Questions and their scores are different values: different versions (scores used to reuse the ids').
    assert (
        a["qa_quality_scores"].tags["dagster/data_version"] != a["synthetic_qa"].tags["dagster/data_version"]
    )
    # Same corpus and generator: the same questions, found again.
    assert a["synthetic_qa"].tags["dagster/data_version"] == b["synthetic_qa"].tags["dagster/data_version"]
    for asset in ("qa_splits", "mined_negatives", "training_examples", "finetuned_model"):
        assert a[asset].tags["dagster/data_version"] != b[asset].tags["dagster/data_version"], asset
    assert a["mined_negatives"].tags["dagster/code_version"]


def test_artifacts_are_immutable_and_each_run_keeps_its_own(two_runs):
    home, _, first, second = two_runs
    model_a, model_b = first.output_for_node("finetuned_model"), second.output_for_node("finetuned_model")
    assert model_a["path"] != model_b["path"]  # other negatives: another model, in another folder
    assert Path(model_a["path"]).is_dir() and Path(model_b["path"]).is_dir()
    beir_a = _mats(first)["qa_splits"].metadata["beir_dir"].value
    beir_b = _mats(second)["qa_splits"].metadata["beir_dir"].value
    assert beir_a != beir_b  # another split seed: another test set, in another folder
    # Every value file the first run recorded still holds exactly what it wrote.
    for asset, mat in _mats(first).items():
        path, sha = mat.metadata["value_path"].value, mat.metadata["value_sha256"].value
        assert Path(path).parent == home / "assets" / asset
        assert file_sha256(path) == sha, asset
    assert len(list((home / "assets" / "synthetic_qa").glob("*.parquet"))) == 1  # same content, one file
    assert len(list((home / "assets" / "mined_negatives").glob("*.parquet"))) == 2
    # The chunk table was built once: the second run found it, and embedded nothing.
    index_b = _mats(second)["base_chunk_index"].metadata
    assert index_b["reused_table"].value is True and index_b["embeddings_computed"].value == 0
    assert _mats(first)["base_chunk_index"].metadata["embeddings_computed"].value > 0
    # The chunk table's version is pinned by its manifest, recorded and re-hashed by the audit.
    [manifest] = _mats(first)["base_chunk_index"].metadata["artifacts"].value
    assert manifest.endswith(".manifest") and "/_versions/" in manifest


def test_model_card_names_the_versions_dagster_recorded(two_runs):
    _, _, first, _ = two_runs
    mats = _mats(first)
    model = first.output_for_node("finetuned_model")
    card = json.loads((Path(model["path"]) / "embed_assets_training.json").read_text())
    assert card["qa_splits_version"] == mats["qa_splits"].tags["dagster/data_version"]
    assert card["training_examples_version"] == mats["training_examples"].tags["dagster/data_version"]
    assert mats["finetuned_model"].metadata["git_commit"].value
    assert mats["finetuned_model"].metadata["package_version"].value


def test_a_card_written_twice_holds_one_record(tmp_path):
    from embed_assets.training.trainer import TrainingConfig, TrainingResult

    result = TrainingResult(
        model_dir=str(tmp_path), steps=1, train_rows=8, train_seconds=1.0, examples_per_second=1.0
    )
    for run in ("run-1", "run-2"):
        _write_card(tmp_path, "base", TrainingConfig(), result, {"dagster_run_id": run})
    card = (tmp_path / "README.md").read_text()
    assert card.count(CARD_HEADING) == 1 and "run-2" in card and "run-1" not in card


def test_audit_prints_the_chain_and_fails_on_a_tampered_file(two_runs, capsys):
    _, _, first, second = two_runs
    assert main(["audit", first.run_id]) == 0
    tree = capsys.readouterr().out
    for asset in (
        "retrieval_eval",
        "finetuned_model",
        "training_examples",
        "training_recipe",
        "mined_negatives",
        "qa_splits",
        "qa_quality_scores",
        "synthetic_qa",
        "base_chunk_index",
        "document_chunks",
        "source_documents",
    ):
        assert asset in tree, asset
    assert "FAILED" not in tree and "all match their recorded SHA-256" in tree
    assert main(["audit", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["ok"] and chain["chain"]["run_id"] == second.run_id  # latest by default

    def links(node):
        yield node
        for child in node["inputs"]:
            yield from links(child)

    recipe = next(n for n in links(chain["chain"]) if n["asset"] == "training_recipe")
    assert recipe["config"] == {"preset": "auto", "selection_steps": 3}  # the recipe resource's config

    # Tamper with one file of the first run's model: its audit fails, naming the file.
    model_dir = Path(first.output_for_node("finetuned_model")["path"])
    victim = model_dir / "config_sentence_transformers.json"
    original = victim.read_bytes()
    victim.write_bytes(original + b" ")
    try:
        assert main(["audit", first.run_id]) == 1
        out = capsys.readouterr().out
        assert "changed" in out and str(victim.resolve()) in out and "1 missing or changed" in out
        assert main(["audit", second.run_id]) == 0  # the second run's chain does not use it
        capsys.readouterr()
    finally:
        victim.write_bytes(original)
    assert main(["audit", "no-such-run"]) == 2
    assert "no retrieval_eval materialization in run no-such-run" in capsys.readouterr().err


def test_gc_keeps_what_evaluations_use_and_deletes_the_rest(two_runs, capsys):
    home, _, first, _ = two_runs
    orphan = home / "assets" / "mined_negatives" / "0000000000000000.parquet"
    orphan.write_bytes(b"left by a run that was never evaluated")
    orphan_model = home / "models" / "finetuned-orphan"
    orphan_model.mkdir()
    (orphan_model / "modules.json").write_text("[]")
    # The ONNX exports the runs encoded with are a cache: gc frees them, a run rebuilds them.
    encoders = sorted((home / "encoders").iterdir())
    assert any(e.name.startswith("base-") for e in encoders) and len(encoders) >= 2
    assert main(["gc", "--home", str(home), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would delete {orphan}" in out and f"would delete {orphan_model}" in out
    assert orphan.exists()
    assert main(["gc", "--home", str(home)]) == 0
    capsys.readouterr()
    assert not orphan.exists() and not orphan_model.exists()
    assert not any(e.exists() for e in encoders)
    assert main(["audit", first.run_id]) == 0  # nothing an evaluation uses was touched
    capsys.readouterr()
