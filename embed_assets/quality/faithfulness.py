"""Answer faithfulness scored by ragas, with every request routed through our LLM client.

Faithfulness (Es et al. 2023, "RAGAS") asks whether everything an answer claims can be
inferred from its context: an LLM first breaks the answer into self-contained statements,
then judges each statement against the context (a natural-language-inference verdict, 0
or 1); the score is the share of supported statements, 0–1. An answer that adds facts the
positive chunk does not hold would teach the fine-tuned model to match chunks to claims
they do not make.

Why ragas: its claim extraction and NLI verification are the well-kept, widely used
implementation of this metric (tuned instructions, few-shot examples, a repair prompt
for replies that are not valid JSON); copying the prompts here would drift from it.
The legacy ``ragas.metrics._faithfulness.Faithfulness`` is used because ragas 0.4's
``ragas.metrics.collections.Faithfulness`` only accepts instructor-based LLMs, which call
an OpenAI client directly; the legacy class takes any ``BaseRagasLLM``. It is imported
from its module because ``ragas.metrics.Faithfulness`` warns of deprecation.

Why through our client: left to itself, ragas would call the endpoint with its own
adapters, bypassing the durable SQLite response cache (a re-run would pay for every call
again), the client-side rate limits, the retries honouring ``Retry-After``, the preflight
and the API-key scrubbing. :class:`ClientRagasLLM` is a ``BaseRagasLLM`` whose requests go
through :meth:`LLMClient.complete_text
<embed_assets.llm.client.LLMClient.complete_text>`: each distinct ragas request
(statements, verdicts, ragas' own format repair) is cached under a key made of its exact
prompt text, the model, the sampling parameters and the content hashes of the pair's
positive chunks, so scoring unchanged pairs again makes no call. ragas' own retries are
switched off (ours already ran), so a failed request is counted, not repeated blindly.

The LLM judge's ``judge_context_support`` asks the same question in one call alongside
its other scores; this is the finer, claim-level check at two or more calls per pair,
so it is opt-in (``QAQualityConfig.ragas_faithfulness``).

ragas is imported when this module is, so import the module only when the scorer is
wanted (the quality asset does); the rest of the package does not need ragas.
"""

from __future__ import annotations

import os

# Before importing ragas: no usage telemetry (and the machine may be offline).
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

import logging
import math
import typing as t
from dataclasses import replace

import polars as pl

from embed_assets.llm.cache import ResponseCache
from embed_assets.llm.client import (
    DropError,
    LLMClient,
    LLMSettings,
)
from embed_assets.quality.llm_scoring import score_pairs_with_llm

try:
    from langchain_core.exceptions import OutputParserException
    from langchain_core.outputs import Generation, LLMResult
    from ragas.dataset_schema import SingleTurnSample
    from ragas.exceptions import LLMDidNotFinishException, RagasOutputParserException
    from ragas.llms.base import BaseRagasLLM
    from ragas.metrics._faithfulness import Faithfulness
    from ragas.run_config import RunConfig
except ImportError as exc:  # pragma: no cover - ragas is a main dependency
    raise ImportError(
        "ragas faithfulness needs ragas 0.4 and langchain-community: "
        "pip install 'ragas>=0.4,<0.5' 'langchain-community<0.4'"
    ) from exc

if t.TYPE_CHECKING:
    from langchain_core.callbacks import Callbacks
    from langchain_core.prompt_values import PromptValue

logger = logging.getLogger("embed_assets.generation")

FAITHFULNESS_COLUMN = "ragas_faithfulness"


class ClientRagasLLM(BaseRagasLLM):
    """A ragas LLM whose every request goes through an :class:`LLMClient`.

    Args:
        client: the client (cache, rate limits, retries, key scrubbing) to send through.
        chunk_hashes: content hashes of the chunk(s) the requests are about; part of each
            cache key, so a changed chunk is scored again.
        chunk_ids: chunk ids stored with each cached reply (lineage only).
        prompt_key: the cache rows' prompt name. ragas' exact prompt text is hashed into
            the key too, so a ragas upgrade that rewords a prompt gets new keys.

    Each ragas prompt is sent as one user message (``prompt.to_string()``). The sampling
    parameters are the client's, not ragas': ragas asks for temperature 0.01 (0.3 when
    ``n > 1``); the client's settings decide, so the cache key and the request agree.
    ``stop`` is not sent (the client has no stop sequences; ragas' metrics pass none) but
    is part of the key when given. For ``n > 1`` one request is made and its text
    returned ``n`` times: distinct samples would need distinct cache keys and ``n`` calls,
    and the legacy faithfulness metric only ever asks for one.

    ragas' own retry wrapper is limited to a single attempt (``RunConfig(max_retries=1)``):
    the client has already retried transient failures, and a :class:`DropError` or
    :class:`LLMEndpointError` must reach the caller instead of being retried blindly.
    Async only: ragas' metrics call :meth:`agenerate_text`.
    """

    def __init__(
        self,
        client: LLMClient,
        *,
        chunk_hashes: t.Iterable[str],
        chunk_ids: t.Iterable[str] = (),
        prompt_key: str = "ragas@v1",
    ):
        super().__init__(run_config=RunConfig(max_retries=1))
        self.client = client
        self.chunk_hashes = list(chunk_hashes)
        self.chunk_ids = list(chunk_ids)
        self.prompt_key = prompt_key

    def set_run_config(self, run_config: RunConfig) -> None:
        # ragas' evaluate() hands every metric its RunConfig (10 retries by default);
        # keep the single attempt, the client does the retrying.
        self.run_config = replace(run_config, max_retries=1)

    def generate_text(
        self,
        prompt: PromptValue,
        n: int = 1,
        temperature: float = 0.01,
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
    ) -> LLMResult:
        raise NotImplementedError(
            "ClientRagasLLM is async only (its client is bound to one event loop); "
            "ragas' metrics call agenerate_text"
        )

    async def agenerate_text(
        self,
        prompt: PromptValue,
        n: int = 1,
        temperature: float | None = 0.01,
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
    ) -> LLMResult:
        text = await self.client.complete_text(
            self.prompt_key,
            [{"role": "user", "content": prompt.to_string()}],
            chunk_hashes=self.chunk_hashes,
            chunk_ids=self.chunk_ids,
            extra={"stop": list(stop)} if stop else None,
        )
        return LLMResult(generations=[[Generation(text=text) for _ in range(max(1, n))]])

    def is_finished(self, response: LLMResult) -> bool:
        # A reply cut off by max_tokens fails ragas' parsing and goes to its repair prompt.
        return True


class RagasFaithfulness:
    """Scores the answers of QA pairs for faithfulness to their positive chunks, with ragas.

    Args:
        settings: endpoint, model, key, limits and cache path, as for generation.
        temperature: sampling temperature. Default 0.0 (verdicts should not be random).
        max_tokens: reply cap; the verdict reply restates every statement with a reason.
            Default 2048.
        cache: the response cache; None opens ``settings.cache_path`` when set.

    After :meth:`score`, ``last_stats`` holds the counters of that call (``llm_calls``,
    ``cache_hits``, ``scored``, ``unscored:<reason>``, and the client's ``retries``...).
    Reasons: ``no_answer`` (empty answer, skipped without a call), ``missing_chunk``,
    ``no_statements`` (ragas found no claim in the answer), ``malformed`` (ragas could not
    parse the replies, even after its repair prompt), the client's drop reasons
    (``empty``, ``refusal``, ``timeout``, ``rate_limit``, ``http_error``, ``connection``)
    and ``error`` (anything else, logged with the key scrubbed).
    """

    name = "ragas-faithfulness"
    prompt_key = "ragas_faithfulness@v1"

    def __init__(
        self,
        settings: LLMSettings,
        temperature: float = 0.0,
        max_tokens: int = 2048,
        cache: ResponseCache | None = None,
    ):
        self.settings = replace(settings, temperature=temperature, max_tokens=max_tokens)
        self.cache = cache  # None: the client opens settings.cache_path
        self.last_stats: dict[str, int] = {}

    def score(self, qa: pl.DataFrame, chunks: pl.DataFrame) -> pl.DataFrame:
        """``qa`` with a Float64 column ``ragas_faithfulness`` (0–1; null where unscored).

        Args:
            qa: a QA frame (``QA_SCHEMA``); needs ``question``, ``answer``, ``positive_chunk_ids``.
            chunks: the chunk frame; positives are looked up by ``chunk_id``.

        Raises :class:`LLMEndpointError` only when the endpoint is unusable.
        """
        scores, stats = score_pairs_with_llm(
            qa,
            chunks,
            self.settings,
            self.cache,
            self._score,
            label="ragas faithfulness pairs",
            malformed=(RagasOutputParserException, OutputParserException, LLMDidNotFinishException),
        )
        stats["scored"] = sum(s is not None for s in scores)
        self.last_stats = dict(sorted(stats.items()))
        return qa.with_columns(pl.Series(FAITHFULNESS_COLUMN, scores, dtype=pl.Float64))

    async def _score(self, client: LLMClient, row: dict, positives: list[str]) -> float:
        answer = (row["answer"] or "").strip()
        if not answer:
            raise DropError("no_answer")
        ids = list(row["positive_chunk_ids"])
        llm = ClientRagasLLM(client, chunk_hashes=ids, chunk_ids=ids, prompt_key=self.prompt_key)
        metric = Faithfulness(llm=llm)
        sample = SingleTurnSample(
            user_input=row["question"] or "",
            response=answer,
            retrieved_contexts=positives,
        )
        score = await metric.single_turn_ascore(sample)
        if score is None or math.isnan(score):
            raise DropError("no_statements")
        return min(1.0, max(0.0, float(score)))


def ragas_faithfulness(
    qa: pl.DataFrame,
    chunks: pl.DataFrame,
    settings: LLMSettings,
    cache: ResponseCache | None = None,
) -> pl.DataFrame:
    """Functional form of :meth:`RagasFaithfulness.score` (the stats are not returned)."""
    return RagasFaithfulness(settings, cache=cache).score(qa, chunks)


__all__ = ["FAITHFULNESS_COLUMN", "ClientRagasLLM", "RagasFaithfulness", "ragas_faithfulness"]
