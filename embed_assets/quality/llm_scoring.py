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

from embed_assets.llm.cache import ResponseCache
from embed_assets.llm.client import (
    DropError,
    LLMClient,
    LLMSettings,
    Progress,
    guarded,
    run_sync,
)

S = TypeVar("S")
# score_one(client, row, positive_texts): the texts are row["positive_chunk_ids"]'s, in order.
ScoreOne = Callable[[LLMClient, dict, list[str]], Awaitable[S]]


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
    """``score_one(client, row, positive_texts)`` for every pair, concurrently.

    Args:
        qa: pairs with ``question``, ``answer``, ``positive_chunk_ids``.
        chunks: the chunk frame (``chunk_id``, ``text``).
        settings: endpoint, limits and key of the scoring LLM.
        cache: the durable response cache (None: ``settings.cache_path`` when set).
        score_one: the coroutine that scores one pair; raises ``DropError`` to skip it. A
            pair without positives, or with one missing from ``chunks``, is skipped before
            it is called (``unscored:missing_chunk``).
        label: what the progress log and warnings call a unit.
        malformed: exception types counted as ``unscored:malformed``.

    Returns:
        The scores (``None`` where unscored), row-aligned with ``qa``, and the counters
        (``llm_calls``, ``cache_hits``, ``unscored:<reason>``, ...).
    Raises :class:`~embed_assets.llm.client.LLMEndpointError` when the endpoint
    is unusable.
    """
    stats: Counter = Counter()
    client = LLMClient(settings, cache=cache, stats=stats)
    texts = dict(zip(chunks["chunk_id"].to_list(), chunks["text"].to_list(), strict=True))
    rows = qa.select("question", "answer", "positive_chunk_ids").to_dicts()

    async def one(row: dict) -> S:
        ids = list(row["positive_chunk_ids"] or [])
        missing = [c for c in ids if c not in texts]
        if not ids or missing:
            raise DropError("missing_chunk", f"{len(missing)} positive(s) not in the chunk frame")
        return await score_one(client, row, [texts[c] for c in ids])

    async def run() -> list[S | None]:
        progress = Progress(len(rows), label)
        units = [
            guarded(
                client,
                one(row),
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
