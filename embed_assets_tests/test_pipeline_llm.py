"""The Dagster assets with a real OpenAI-compatible endpoint (a scripted server on loopback):
single- and multi-hop questions, judge scores, zero calls on re-materialization, no key leaks."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dagster as dg
import polars as pl
import pytest

from embed_assets.defs.definitions import all_assets, build_resources
from embed_assets.defs.resources import QuestionGeneratorResource
from embed_assets_tests.llm_fault_server import FaultServer

KEY = "sk-pipeline-secret-42"
MINI_CORPUS = Path(__file__).parent / "fixtures" / "mini_corpus"
SELECTION = ["source_documents", "document_chunks", "base_chunk_index", "synthetic_qa", "qa_quality_scores"]


@pytest.fixture(scope="module")
def server():
    with FaultServer(expected_api_key=KEY) as srv:
        yield srv


def run(server, home: Path, instance) -> dg.ExecuteInProcessResult:
    generator = QuestionGeneratorResource(
        backend="litellm",
        model="openai/test-model",
        api_base=server.url,
        api_key_env="EMBED_ASSETS_TEST_KEY",
        timeout_s=5.0,
        max_retries=2,
    )
    return dg.materialize(
        all_assets,
        selection=SELECTION,
        run_config={
            "ops": {
                "source_documents": {"config": {"corpus_dir": str(MINI_CORPUS)}},
                "synthetic_qa": {"config": {"max_chunks": 8, "multi_hop_questions": 3}},
            }
        },
        resources=build_resources(str(home), generator=generator),
        instance=instance,
    )


def metadata(result, key: str) -> dict:
    for e in result.get_asset_materialization_events():
        mat = e.event_specific_data.materialization
        if mat.asset_key.to_user_string() == key:
            return {k: v.value for k, v in mat.metadata.items()}
    raise KeyError(key)


def test_llm_backend_through_dagster(server, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBED_ASSETS_TEST_KEY", KEY)
    instance = dg.DagsterInstance.ephemeral()
    first = run(server, tmp_path, instance)
    qa = first.output_for_node("synthetic_qa")
    scored = first.output_for_node("qa_quality_scores")
    assert (qa["hops"] == 1).any() and (qa["hops"] > 1).any()
    assert all(len(p) >= 2 for p in qa.filter(pl.col("hops") > 1)["positive_chunk_ids"])
    assert scored["judge_overall"].drop_nulls().len() > 0
    assert metadata(first, "synthetic_qa")["llm_calls"] > 0
    assert metadata(first, "qa_quality_scores")["judge"] == "on"
    calls_after_first = server.count

    # Same chunks, same prompts, same model: everything comes from the durable cache.
    second = run(server, tmp_path, instance)
    assert server.count == calls_after_first
    assert metadata(second, "synthetic_qa")["llm_calls"] == 0
    assert second.output_for_node("synthetic_qa").equals(qa)

    # The key is in the environment only: not in metadata, the event log or any written file.
    logs = json.dumps(
        [str(e) for e in instance.all_logs(first.run_id)] + [str(e) for e in instance.all_logs(second.run_id)]
    )
    assert KEY not in logs
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
