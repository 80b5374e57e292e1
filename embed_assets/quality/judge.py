"""LLM-as-judge scores for synthetic pairs.

The judge reads the positive chunk(s), the question and the answer, and scores 1–10:
relevance (a real user would ask it), accuracy (the answer is right per the chunks),
context support (everything the answer says is in the chunks: a faithfulness score),
clarity (the question stands on its own) and overall. ``filters.score_pairs`` averages
``judge_overall / 10`` into the pair's score and drops pairs under ``min_judge_overall``.

It uses the same :class:`~embed_assets.llm.client.LLMClient` as generation
(retries, rate limits, preflight, no key in logs) and the same SQLite response cache, so
re-judging an unchanged pair costs nothing. A pair the judge could not score keeps null
scores (it is then judged by the other signals only) and the reason is counted.

ragas faithfulness: ``judge_v1``'s ``context_support`` asks the question ragas' faithfulness
asks (are the answer's claims supported by the context) in the same call as the other
scores. The finer, claim-by-claim check (claim extraction, then verification: two or more
calls per pair) is :mod:`~embed_assets.quality.faithfulness`, opt-in with
``QAQualityConfig.ragas_faithfulness``; it runs ragas' metric through this same client and
cache.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import polars as pl

from embed_assets.llm.cache import ResponseCache
from embed_assets.llm.client import (
    LLMClient,
    LLMSettings,
)
from embed_assets.llm.prompts import load_prompt
from embed_assets.llm.schemas import JudgeScores
from embed_assets.quality.llm_scoring import score_pairs_with_llm

logger = logging.getLogger("embed_assets.generation")

JUDGE_COLUMNS = (
    "judge_relevance",
    "judge_accuracy",
    "judge_context_support",
    "judge_clarity",
    "judge_overall",
)
_FIELDS = ("relevance", "accuracy", "context_support", "clarity", "overall")


def _delimit(text: str) -> str:
    return text.replace("</chunk", "</ chunk").replace("<chunk", "< chunk")


def _tag_safe(text: str, tag: str) -> str:
    return text.replace(f"</{tag}", f"</ {tag}")


class LLMJudge:
    """Scores QA pairs with an LLM.

    Args:
        settings: endpoint, model, key, limits and cache path, as for generation.
        temperature: judge sampling temperature. Default 0.0 (scores should not be random).
        max_tokens: reply cap; the reply is a small JSON object. Default 256.

    After :meth:`judge_pairs`, ``last_stats`` holds the counters of that call
    (``llm_calls``, ``cache_hits``, ``judged``, ``unscored:<reason>``).
    """

    name = "llm-judge-v1"

    def __init__(self, settings: LLMSettings, temperature: float = 0.0, max_tokens: int = 256):
        self.settings = replace(settings, temperature=temperature, max_tokens=max_tokens)
        self.cache = ResponseCache(settings.cache_path) if settings.cache_path else None
        self.prompt = load_prompt("judge")
        self.last_stats: dict[str, int] = {}

    def judge_pairs(self, qa: pl.DataFrame, chunks: pl.DataFrame) -> pl.DataFrame:
        """``qa`` with ``judge_relevance, judge_accuracy, judge_context_support, judge_clarity,
        judge_overall`` (Float64, 1–10; null where the judge could not score).

        Args:
            qa: a QA frame (``QA_SCHEMA``); needs ``question``, ``answer``, ``positive_chunk_ids``.
            chunks: the chunk frame; positives are looked up by ``chunk_id``.

        Raises :class:`LLMEndpointError` only when the endpoint is unusable.
        """
        scores, stats = score_pairs_with_llm(
            qa, chunks, self.settings, self.cache, self._score, label="judge pairs"
        )
        stats["judged"] = sum(s is not None for s in scores)
        self.last_stats = dict(sorted(stats.items()))
        columns = {
            col: pl.Series(
                col, [None if s is None else float(getattr(s, f)) for s in scores], dtype=pl.Float64
            )
            for col, f in zip(JUDGE_COLUMNS, _FIELDS, strict=True)
        }
        return qa.with_columns(**columns)

    async def _score(self, client: LLMClient, row: dict, positives: list[str]) -> JudgeScores:
        ids = list(row["positive_chunk_ids"])
        blocks = "\n\n".join(
            f'<chunk index="{n}">\n{_delimit(text)}\n</chunk>' for n, text in enumerate(positives, start=1)
        )
        messages = self.prompt.messages(
            chunks=blocks,
            question=_tag_safe(row["question"] or "", "question"),
            answer=_tag_safe(row["answer"] or "", "answer"),
        )
        return await client.complete_json(self.prompt, messages, JudgeScores, chunk_hashes=ids, chunk_ids=ids)


def judge_pairs(qa: pl.DataFrame, chunks: pl.DataFrame, judge: LLMJudge) -> pl.DataFrame:
    """Functional form of :meth:`LLMJudge.judge_pairs`."""
    return judge.judge_pairs(qa, chunks)
