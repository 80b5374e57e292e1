"""Run an async LLM scorer over QA pairs: one client, bounded concurrency, counted failures.

Shared by the LLM judge and ragas faithfulness: both score each pair against its positive
chunk(s) through the same cached, rate-limited :class:`LLMClient`, and a pair that cannot
be scored keeps ``None`` with its reason counted as ``unscored:<reason>``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import polars as pl

from embed_assets.generation.llm_client import LLMClient, LLMSettings, Progress, guarded, run_sync
from embed_assets.generation.response_cache import ResponseCache

S = TypeVar("S")
ScoreOne = Callable[[LLMClient, dict, dict[str, str]], Awaitable[S]]


def score_pairs_with_llm(
    qa: pl.DataFrame,
    chunks: pl.DataFrame,
    settings: LLMSettings,
    cache: ResponseCache | None,
    score_one: ScoreOne,
    *,
    label: str,
    malformed: tuple[type[BaseException], ...] = (),
) -> tuple[list[S | None], dict[str, int]]:
    """``score_one(client, row, chunk_texts)`` for every pair, concurrently.

    Args:
        qa: pairs with ``question``, ``answer``, ``positive_chunk_ids``.
        chunks: the chunk frame (``chunk_id``, ``text``).
        settings: endpoint, limits and key of the scoring LLM.
        cache: the durable response cache (None: no cache).
        score_one: the coroutine that scores one pair; raises ``DropError`` to skip it.
        label: what the progress log and warnings call a unit.
        malformed: exception types counted as ``unscored:malformed``.

    Returns:
        The scores (``None`` where unscored), row-aligned with ``qa``, and the counters
        (``llm_calls``, ``cache_hits``, ``unscored:<reason>``, ...).
    Raises :class:`~embed_assets.generation.llm_client.LLMEndpointError` when the endpoint
    is unusable.
    """
    stats: Counter = Counter()
    client = LLMClient(settings, cache=cache, stats=stats)
    texts = dict(zip(chunks["chunk_id"].to_list(), chunks["text"].to_list(), strict=True))
    rows = qa.select("question", "answer", "positive_chunk_ids").to_dicts()

    async def run() -> list[S | None]:
        progress = Progress(len(rows), label)
        units = [
            guarded(
                client,
                score_one(client, row, texts),
                None,
                prefix="unscored",
                what=label,
                progress=progress,
                malformed=malformed,
            )
            for row in rows
        ]
        try:
            return list(await asyncio.gather(*units))
        finally:
            await client.aclose()

    scores = run_sync(run())
    for always in ("llm_calls", "cache_hits"):
        stats.setdefault(always, 0)
    return scores, {k: int(v) for k, v in stats.items()}
