"""ragas' faithfulness metric routed through our LLM client, over real HTTP against the
scripted OpenAI-compatible server (``llm_fault_server``): scores, the response cache
(0 calls on a re-run), faults, key scrubbing, the ``min_faithfulness`` drop and the config.

The server answers ragas' statement prompt with one statement per sentence of the answer,
and its verdict prompt with 1 for a statement found verbatim in the context, else 0.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import logging
import traceback
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from llm_fault_server import TEST_KEY as KEY
from llm_fault_server import FaultServer, loopback_settings
from pydantic import ValidationError

from embed_assets.defs.assets.quality import qa_quality_scores
from embed_assets.defs.configs import QAQualityConfig, RunConfigError, validate_run_config
from embed_assets.defs.resources import ArtifactStoreResource, BaseModelResource, QuestionGeneratorResource
from embed_assets.generation.base import qa_frame
from embed_assets.llm.cache import ResponseCache
from embed_assets.llm.client import LLMClient, LLMEndpointError, LLMSettings, run_sync
from embed_assets.quality.faithfulness import ClientRagasLLM, RagasFaithfulness
from embed_assets.quality.filters import QualityConfig, score_pairs

STATEMENTS = "Break down each sentence"  # in ragas' statement-generator prompt
VERDICTS = "judge the faithfulness"  # in ragas' NLI prompt
REPAIR = "did not satisfy the constraints"  # in ragas' output-format repair prompt

CHUNKS = pl.DataFrame(
    {
        "chunk_id": ["c-pool", "c-sky"],
        "text": [
            "Setting param_1_limit caps the size of worker pool 1. "
            "Error code E1001 is raised when the pool overflows.",
            "The sky over the data centre is blue.",
        ],
    }
)


def pair(question: str, answer: str | None, positives: list[str]) -> dict:
    return {
        "question": question,
        "answer": answer,
        "query_type": "factual",
        "complexity": 1,
        "hops": len(positives),
        "positive_chunk_ids": positives,
        "doc_ids": ["d"],
        "generator": "test",
    }


def make_qa() -> pl.DataFrame:
    return qa_frame(
        [
            # Both claims verbatim in the chunk: 1.0.
            pair(
                "what caps worker pool 1",
                "Setting param_1_limit caps the size of worker pool 1. "
                "Error code E1001 is raised when the pool overflows.",
                ["c-pool"],
            ),
            # One claim of two supported: 0.5.
            pair(
                "what happens when the pool overflows",
                "Error code E1001 is raised when the pool overflows. The pool then restarts on its own.",
                ["c-pool"],
            ),
            # The only claim contradicts the chunk: 0.0.
            pair("what colour is the sky", "The sky over the data centre is green.", ["c-sky"]),
            # Skipped without a call.
            pair("no answer here", "", ["c-sky"]),
            pair("orphan", "Something.", ["c-missing"]),
        ]
    )


def settings(server: FaultServer, tmp_path: Path, **overrides) -> LLMSettings:
    return loopback_settings(server, tmp_path, KEY, **{"concurrency": 4, **overrides})


def cache_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob("llm_cache.sqlite*"))


# -- scores and the cache ----------------------------------------------------------------------


def test_scores_pairs_and_rerun_makes_no_call(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    s = settings(server, tmp_path)
    scorer = RagasFaithfulness(s)
    scored = scorer.score(make_qa(), CHUNKS)

    assert scored.schema["ragas_faithfulness"] == pl.Float64
    assert scored["ragas_faithfulness"].to_list() == [1.0, 0.5, 0.0, None, None]
    stats = scorer.last_stats
    assert stats["scored"] == 3
    assert stats["unscored:no_answer"] == 1 and stats["unscored:missing_chunk"] == 1
    # Two ragas prompts per scored pair (the preflight is counted apart); none for skipped pairs.
    assert stats["llm_calls"] == 6 and stats["preflight_calls"] == 1 and stats["cache_hits"] == 0
    assert server.count_matching(STATEMENTS) == 3 and server.count_matching(VERDICTS) == 3
    ragas_requests = [r for r in server.requests if STATEMENTS in r.text or VERDICTS in r.text]
    assert all(r.body["temperature"] == 0.0 for r in ragas_requests)
    assert all("response_format" not in r.body for r in ragas_requests)
    with ResponseCache(s.cache_path) as cache:
        assert cache.count(RagasFaithfulness.prompt_key) == 6

    calls = server.count
    again = RagasFaithfulness(s)
    rescored = again.score(make_qa(), CHUNKS)
    assert server.count == calls  # every ragas request came from the cache
    assert again.last_stats["llm_calls"] == 0 and again.last_stats["cache_hits"] == 6
    assert rescored.equals(scored)

    assert KEY.encode() not in cache_bytes(tmp_path)
    assert KEY not in caplog.text


def test_changed_chunk_is_scored_again(server, tmp_path):
    s = settings(server, tmp_path)
    RagasFaithfulness(s).score(make_qa().head(1), CHUNKS)
    # An edited chunk has a new content hash (its chunk_id): both ragas requests are new.
    edited = pl.DataFrame(
        {
            "chunk_id": ["c-pool-v2"],
            "text": ["Setting param_1_limit caps worker pool 1. Nothing else happens."],
        }
    )
    qa = make_qa().head(1).with_columns(positive_chunk_ids=pl.Series([["c-pool-v2"]]))
    scorer = RagasFaithfulness(s)
    scored = scorer.score(qa, edited)
    assert scorer.last_stats["cache_hits"] == 0 and scorer.last_stats["llm_calls"] == 2
    assert scored["ragas_faithfulness"][0] == 0.0


def test_n_generations_reuse_one_cached_reply(server, tmp_path):
    from ragas.prompt.pydantic_prompt import PromptValue

    client = LLMClient(settings(server, tmp_path))

    async def go():
        try:
            llm = ClientRagasLLM(client, chunk_hashes=["c-pool"])
            return await llm.agenerate_text(PromptValue(text="Say ok as JSON."), n=3)
        finally:
            await client.aclose()

    result = run_sync(go())
    texts = [g.text for g in result.generations[0]]
    assert len(texts) == 3 and len(set(texts)) == 1
    assert client.stats["llm_calls"] == 1
    with pytest.raises(NotImplementedError, match="async"):
        ClientRagasLLM(client, chunk_hashes=[]).generate_text(PromptValue(text="x"))


# -- faults ------------------------------------------------------------------------------------


def test_server_error_then_ok_is_retried(server, tmp_path):
    server.add_rule(STATEMENTS, "server_error")
    server.add_rule(VERDICTS, "rate_limit")
    scorer = RagasFaithfulness(settings(server, tmp_path))
    scored = scorer.score(make_qa().head(1), CHUNKS)
    assert scored["ragas_faithfulness"][0] == 1.0
    assert scorer.last_stats["retry:server_error"] == 1 and scorer.last_stats["retry:rate_limit"] == 1
    assert scorer.last_stats["scored"] == 1


def test_malformed_reply_is_repaired_by_ragas_and_cached(server, tmp_path):
    server.add_rule(STATEMENTS, "malformed")
    s = settings(server, tmp_path)
    scorer = RagasFaithfulness(s)
    scored = scorer.score(make_qa().head(1), CHUNKS)
    assert scored["ragas_faithfulness"][0] == 1.0
    assert server.count_matching(REPAIR) == 1  # ragas' repair prompt, through our client
    assert scorer.last_stats["llm_calls"] == 3  # statements, repair, verdicts
    calls = server.count
    again = RagasFaithfulness(s)
    assert again.score(make_qa().head(1), CHUNKS).equals(scored)
    assert server.count == calls and again.last_stats["cache_hits"] == 3


@pytest.mark.parametrize(
    ("action", "reason"),
    [("malformed", "malformed"), ("refusal", "refusal"), ("empty", "empty"), ("server_error", "http_error")],
)
def test_persistent_fault_is_counted_not_raised(server, tmp_path, action, reason):
    qa = make_qa().head(3)
    # Every request about the second pair (its answer is quoted in all of ragas' prompts).
    server.add_rule("The pool then restarts on its own", *[action] * 20)
    scorer = RagasFaithfulness(settings(server, tmp_path))
    scored = scorer.score(qa, CHUNKS)
    assert scored["ragas_faithfulness"].to_list() == [1.0, None, 0.0]
    assert scorer.last_stats[f"unscored:{reason}"] == 1
    assert scorer.last_stats["scored"] == 2


def test_wrong_key_fails_fast_without_leaking_it(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server.expected_api_key = "sk-the-right-one"
    with pytest.raises(LLMEndpointError, match="API key") as info:
        RagasFaithfulness(settings(server, tmp_path)).score(make_qa(), CHUNKS)
    text = "".join(traceback.format_exception(info.value))
    assert KEY not in text and KEY not in caplog.text
    assert server.count_matching(STATEMENTS) == 0


# -- the keep/drop decision --------------------------------------------------------------------


HASH_SENTENCE = (
    "The memory limit for a hash table is computed by multiplying `work_mem` by `hash_mem_multiplier`."
)
DEADLOCK_SENTENCE = "It may also be advisable to retry deadlock failures."


def _holders(mini_chunks: pl.DataFrame, sentence: str) -> list[str]:
    ids = [c for c, t in zip(mini_chunks["chunk_id"], mini_chunks["text"], strict=True) if sentence in t]
    assert ids, f"fixture sentence not found: {sentence}"
    return ids


def test_score_pairs_drops_unfaithful_answer(server, tmp_path, mini_chunks, mini_index, base_model):
    qa = qa_frame(
        [
            pair(HASH_SENTENCE, HASH_SENTENCE, _holders(mini_chunks, HASH_SENTENCE)),
            pair(
                DEADLOCK_SENTENCE,
                "Deadlock failures must never be retried.",
                _holders(mini_chunks, DEADLOCK_SENTENCE),
            ),
        ]
    )
    judged = RagasFaithfulness(settings(server, tmp_path)).score(qa, mini_chunks)
    assert judged["ragas_faithfulness"].to_list() == [1.0, 0.0]

    cfg = QualityConfig(min_answer_support=0.0, min_faithfulness=0.5)
    scored = score_pairs(judged, mini_chunks, base_model, mini_index, cfg)
    assert scored["roundtrip_rank"].to_list() == [1, 1]
    assert scored["drop_reason"].to_list() == [None, "unfaithful_answer"]
    assert scored["kept"].to_list() == [True, False]

    # 0 (the default) only scores; a null (unscored) pair is judged by the other signals.
    off = score_pairs(judged, mini_chunks, base_model, mini_index, QualityConfig(min_answer_support=0.0))
    assert off["kept"].to_list() == [True, True]
    unscored = judged.with_columns(pl.lit(None, pl.Float64).alias("ragas_faithfulness"))
    assert score_pairs(unscored, mini_chunks, base_model, mini_index, cfg)["kept"].to_list() == [True, True]


# -- the asset and its config -------------------------------------------------------------------


def test_asset_scores_faithfulness_through_the_generator_endpoint(
    server, tmp_path, monkeypatch, mini_chunks, mini_index
):
    monkeypatch.setenv("RAGAS_TEST_KEY", KEY)
    qa = qa_frame([pair(HASH_SENTENCE, HASH_SENTENCE, _holders(mini_chunks, HASH_SENTENCE))])
    generator = QuestionGeneratorResource(
        backend="litellm",
        model="openai/test-model",
        api_base=server.url,
        api_key_env="RAGAS_TEST_KEY",
        judge=False,
        timeout_s=5.0,
    )
    store = ArtifactStoreResource(root_dir=str(tmp_path / "home"))
    result = qa_quality_scores(
        context=dg.build_asset_context(),
        config=QAQualityConfig(ragas_faithfulness=True, min_faithfulness=0.5),
        synthetic_qa=qa,
        document_chunks=mini_chunks,
        base_chunk_index={"uri": mini_index.uri, "table": mini_index.table},
        base_model=BaseModelResource(),
        question_generator=generator,
        store=store,
    )
    assert result.value["ragas_faithfulness"].to_list() == [1.0]
    assert result.value["kept"].to_list() == [True]
    md = result.metadata
    assert md["ragas_faithfulness"] == "on"
    assert "| scored | 1 |" in md["ragas_stats"].value
    assert "faithfulness_histogram" in md
    assert "ragas_faithfulness" in md["sample_pairs"].value
    # The same cache file as generation and the judge.
    with ResponseCache(store.path("llm_cache.sqlite")) as cache:
        assert cache.count(RagasFaithfulness.prompt_key) == 2


def test_asset_fails_fast_without_an_llm_endpoint(tmp_path, mini_chunks, mini_index):
    qa = qa_frame([pair(HASH_SENTENCE, HASH_SENTENCE, _holders(mini_chunks, HASH_SENTENCE))])
    with pytest.raises(Exception, match="ragas_faithfulness is on") as info:
        qa_quality_scores(
            context=dg.build_asset_context(),
            config=QAQualityConfig(ragas_faithfulness=True),
            synthetic_qa=qa,
            document_chunks=mini_chunks,
            base_chunk_index={"uri": mini_index.uri, "table": mini_index.table},
            base_model=BaseModelResource(),
            question_generator=QuestionGeneratorResource(backend="template"),
            store=ArtifactStoreResource(root_dir=str(tmp_path / "home")),
        )
    assert "'template'" in str(info.value)


def test_faithfulness_config_is_validated():
    with pytest.raises(ValueError, match="min_faithfulness"):
        QualityConfig(min_faithfulness=1.5)
    with pytest.raises(ValidationError, match="min_faithfulness"):
        QAQualityConfig(min_faithfulness=1.5)
    with pytest.raises(RunConfigError, match=r"qa_quality_scores\.config\.min_faithfulness"):
        validate_run_config({"ops": {"qa_quality_scores": {"config": {"min_faithfulness": -0.1}}}})
    core = QAQualityConfig(ragas_faithfulness=True, min_faithfulness=0.8).to_core()
    assert core.min_faithfulness == 0.8 and not hasattr(core, "ragas_faithfulness")
    assert QualityConfig().min_faithfulness == 0.0
