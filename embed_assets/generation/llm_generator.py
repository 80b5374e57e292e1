"""Synthetic questions written by an LLM reached through litellm (the ``litellm`` backend).

Per chunk, two calls: first the chunk's *artifacts* (key concepts, entities, the rare exact
identifiers, processes, relationships), then question-answer pairs of several query types
(factual, procedural, causal, comparative, keyword) written with those artifacts in view,
so the questions lean on the identifiers users actually type: error codes, setting names,
versions, product ids. Then multi-hop questions over bundles of 2–3 related chunks (same
document nearby, or sharing a rare identifier across documents), one call per bundle, with
each hop's chunk id and a one-line context; every hop chunk is a positive.

Robustness: every reply goes through the response cache first and is parsed with pydantic;
malformed replies are retried with the error appended; refusals, empty replies, replies
that echo instructions injected in a chunk, and anything else unusable are dropped and
counted in ``stats`` as ``dropped:<reason>``. One chunk's failure never stops the run;
an endpoint that cannot work at all (bad key, unknown model, unreachable) stops it with
:class:`~embed_assets.llm.client.LLMEndpointError` before spending the corpus.

Determinism: for the same chunks, settings, seed and cache, the frame is identical: every
request replays from the cache and the records are ordered by chunk order, then bundle order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from dataclasses import replace
from typing import Any

import polars as pl

from embed_assets.generation.base import GenerationResult, qa_frame
from embed_assets.hashing import stable_hash
from embed_assets.llm.cache import ResponseCache
from embed_assets.llm.client import (
    DropError,
    LLMClient,
    LLMEndpointError,
    LLMSettings,
    Progress,
    guarded,
    run_sync,
)
from embed_assets.llm.prompts import load_prompt
from embed_assets.llm.schemas import Artifacts, MultiHopQA, QAPairs

logger = logging.getLogger("embed_assets.generation")

GENERATOR_VERSION = "sdg-v1"

# Identifiers worth bridging chunks on: single-token `code` spans, snake_case names,
# codes mixing capitals and digits (SQLSTATE 40001, E42), dotted versions.
_CODE_SPAN = re.compile(r"`([^`\s]{3,48})`")
_IDENT = re.compile(
    r"\b(?:[a-z][a-z0-9]*(?:_[a-z0-9]+)+|(?=[0-9A-Z_]*[0-9])(?=[0-9A-Z_]*[A-Z])[0-9A-Z_]{3,12}|\d{1,3}\.\d{1,3}(?:\.\d{1,3})?)\b"
)
# Output that repeats instruction-like text (typically injected in a chunk) instead of asking
# about the content. Deliberately narrow: a real question about "ignoring errors" passes.
_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.?!\n]{0,40}\b(?:previous|prior|above|earlier|all|any|your)\b"
    r"[^.?!\n]{0,20}\b(?:instructions?|prompts?|rules|directions|context)\b"
    r"|\bsystem prompt\b|\byou are now\b|\bnew instructions\b|\bdeveloper mode\b|\bjailbreak\b|\bPWNED\b",
    re.IGNORECASE,
)
# Questions that only make sense next to the passage: useless as search queries.
_CONTEXT_DEPENDENT = re.compile(
    r"\b(?:this|the|above|given|following) (?:passage|text|excerpt|document|section|chunk|context)\b",
    re.IGNORECASE,
)


def looks_like_injection(text: str) -> bool:
    """True when ``text`` reads like instructions to a model rather than a user's query."""
    return bool(_INJECTION.search(text))


def _delimit(text: str) -> str:
    # Chunk text is data inside <chunk> tags; keep it from closing (or faking) a tag.
    return text.replace("</chunk", "</ chunk").replace("<chunk", "< chunk")


def _identifiers(text: str) -> set[str]:
    found = {m.group(1) for m in _CODE_SPAN.finditer(text)}
    found.update(m.group(0) for m in _IDENT.finditer(text))
    return found


def select_bundles(chunks: pl.DataFrame, limit: int, seed: int, max_hops: int = 3) -> list[tuple[int, ...]]:
    """Choose up to ``limit`` bundles of 2–``max_hops`` related chunks (row positions).

    Candidates, best tier first:
    0. chunks sharing a rare identifier (present in 2–``max_hops`` chunks), across or within
       documents; consecutive chunks of one document are not bundled on an identifier,
       since chunk overlap makes them share text;
    1. chunks two apart in one document (near, but not overlapping);
    2. consecutive chunks of one document.
    Within a tier, bundles are ranked by a hash of (seed, chunk ids), so adding chunks only
    adds candidates: the bundles already chosen stay chosen unless a new one outranks them,
    and every new bundle contains a new chunk. Returned in chunk order of their first hop.
    """
    if limit <= 0 or chunks.height < 2:
        return []
    doc_ids = chunks["doc_id"].to_list()
    idx = chunks["chunk_index"].to_list()
    cids = chunks["chunk_id"].to_list()
    where: dict[str, list[int]] = {}
    for i, text in enumerate(chunks["text"].to_list()):
        for ident in _identifiers(text):
            where.setdefault(ident, []).append(i)

    def adjacent(a: int, b: int) -> bool:
        return doc_ids[a] == doc_ids[b] and abs(idx[a] - idx[b]) <= 1

    tiers: dict[tuple[int, ...], int] = {}
    for rows in where.values():
        if not 2 <= len(rows) <= max_hops:
            continue
        bundle: list[int] = []
        for r in rows:
            if not any(adjacent(r, b) for b in bundle):
                bundle.append(r)
        if len(bundle) >= 2:
            tiers[tuple(sorted(bundle))] = 0
    by_doc: dict[str, list[int]] = {}
    for i, d in enumerate(doc_ids):
        by_doc.setdefault(d, []).append(i)
    for rows in by_doc.values():
        rows = sorted(rows, key=lambda r: idx[r])
        for gap, tier in ((2, 1), (1, 2)):
            for a, b in zip(rows, rows[gap:], strict=False):
                tiers.setdefault((a, b), tier)
    ranked = sorted(tiers, key=lambda b: (tiers[b], stable_hash([seed, [cids[i] for i in b]])))
    return sorted(ranked[:limit])


class LLMQuestionGenerator:
    """Questions from an LLM through litellm; implements ``QuestionGenerator``.

    Args:
        settings: endpoint, model, key, limits and cache path (:class:`LLMSettings`).
            ``settings.seed`` is the default; the ``seed`` given to :meth:`generate` wins.

    ``name`` (lineage) holds the model and generator version, never the endpoint or key.
    """

    def __init__(self, settings: LLMSettings):
        self.settings = settings
        self.name = f"llm:{settings.model}:{GENERATOR_VERSION}"
        self.cache = ResponseCache(settings.cache_path) if settings.cache_path else None
        self._artifacts_prompt = load_prompt("artifacts")
        self._qa_prompt = load_prompt("qa_single")
        self._multihop_prompt = load_prompt("qa_multihop")

    def generate(
        self, chunks: pl.DataFrame, *, questions_per_chunk: int, multi_hop_questions: int, seed: int
    ) -> GenerationResult:
        """Write ``questions_per_chunk`` pairs per chunk and up to ``multi_hop_questions``
        multi-hop questions; see the module docstring. Raises ``LLMEndpointError`` only when
        the endpoint is unusable; everything else is dropped and counted."""
        if questions_per_chunk < 1:
            raise ValueError(f"questions_per_chunk must be >= 1, got {questions_per_chunk}")
        stats: Counter = Counter()
        client = LLMClient(replace(self.settings, seed=seed), cache=self.cache, stats=stats)
        rows = list(chunks.iter_rows(named=True))
        bundles = select_bundles(chunks, multi_hop_questions, seed)
        single, multi = run_sync(self._run(client, rows, bundles, questions_per_chunk))
        records = [r for per_chunk in single for r in per_chunk] + [r for r in multi if r is not None]
        qa = qa_frame(records)
        for always in ("llm_calls", "cache_hits"):
            stats.setdefault(always, 0)
        stats["generated_single"] = int((qa["hops"] == 1).sum())
        stats["generated_multi_hop"] = int((qa["hops"] > 1).sum())
        stats["chunks"] = len(rows)
        stats["bundles"] = len(bundles)
        return GenerationResult(qa=qa, stats={k: int(v) for k, v in sorted(stats.items())})

    async def _run(
        self, client: LLMClient, rows: list[dict], bundles: list[tuple[int, ...]], n_questions: int
    ) -> tuple[list[list[dict]], list[dict | None]]:
        progress = Progress(len(rows) + len(bundles), "sdg chunks+bundles")

        def unit(coro: Any, default: Any) -> Any:
            return guarded(client, coro, default, prefix="dropped", what="generation unit", progress=progress)

        single = [unit(self._chunk(client, row, n_questions), []) for row in rows]
        multi = [unit(self._bundle(client, [rows[i] for i in b]), None) for b in bundles]
        try:
            results = await asyncio.gather(*single, *multi)
        finally:
            await client.aclose()
        return results[: len(rows)], results[len(rows) :]

    async def _artifacts(self, client: LLMClient, row: dict) -> Artifacts | None:
        messages = self._artifacts_prompt.messages(title=row["title"] or "", text=_delimit(row["text"]))
        try:
            art = await client.complete_json(
                self._artifacts_prompt,
                messages,
                Artifacts,
                chunk_hashes=[row["chunk_id"]],
                chunk_ids=[row["chunk_id"]],
            )
        except DropError as drop:
            # Questions can still be written without artifacts; count, don't drop the chunk.
            client.stats[f"artifacts_failed:{drop.reason}"] += 1
            return None
        return None if art.is_empty() else art

    async def _chunk(self, client: LLMClient, row: dict, n_questions: int) -> list[dict]:
        art = await self._artifacts(client, row)
        if art is not None and any(looks_like_injection(t) for t in art.technical_terms + art.key_concepts):
            client.stats["artifacts_injection"] += 1
            art = None
        artifacts_json = json.dumps(art.model_dump(), ensure_ascii=False) if art is not None else "{}"
        messages = self._qa_prompt.messages(
            title=row["title"] or "",
            text=_delimit(row["text"]),
            artifacts=artifacts_json,
            n_questions=n_questions,
        )
        reply = await client.complete_json(
            self._qa_prompt,
            messages,
            QAPairs,
            chunk_hashes=[row["chunk_id"]],
            chunk_ids=[row["chunk_id"]],
            extra={"n_questions": n_questions},
        )
        if reply.invalid_pairs:
            client.stats["dropped:invalid_pair"] += reply.invalid_pairs
        if not reply.pairs:
            raise DropError("empty", "no pairs in the reply")
        out: list[dict] = []
        seen: set[str] = set()
        for pair in reply.pairs:
            question = pair.question.strip().strip('"').strip()
            reason = self._reject(question, pair.answer, seen)
            if reason is None and len(out) >= n_questions:
                reason = "surplus"
            if reason is not None:
                client.stats[f"dropped:{reason}"] += 1
                continue
            seen.add(question.lower())
            out.append(
                {
                    "qa_id": None,
                    "question": question,
                    "answer": pair.answer,
                    "query_type": pair.query_type,
                    "complexity": pair.complexity,
                    "hops": 1,
                    "positive_chunk_ids": [row["chunk_id"]],
                    # What the single hop contributes: the answer's first line.
                    "hop_contexts": [(pair.answer.split("\n", 1)[0] or row["title"] or "")[:200]],
                    "doc_ids": [row["doc_id"]],
                    "generator": self.name,
                }
            )
        return out

    @staticmethod
    def _reject(question: str, answer: str, seen: set[str]) -> str | None:
        if len(question) < 3:
            return "empty"
        if looks_like_injection(question) or looks_like_injection(answer):
            return "injection"
        if _CONTEXT_DEPENDENT.search(question):
            return "context_dependent"
        if question.lower() in seen:
            return "duplicate"
        return None

    async def _bundle(self, client: LLMClient, hop_rows: list[dict]) -> dict | None:
        blocks = "\n\n".join(
            f'Passage {n} (document: {r["title"] or r["doc_path"]})\n<chunk index="{n}">\n{_delimit(r["text"])}\n</chunk>'
            for n, r in enumerate(hop_rows, start=1)
        )
        messages = self._multihop_prompt.messages(chunks=blocks, n_hops=len(hop_rows))
        ids = [r["chunk_id"] for r in hop_rows]
        reply = await client.complete_json(
            self._multihop_prompt, messages, MultiHopQA, chunk_hashes=ids, chunk_ids=ids
        )
        contexts = {h.chunk_index: h.context for h in reply.hop_contexts}
        if sorted(contexts) != list(range(1, len(hop_rows) + 1)):
            raise DropError("missing_hop", f"hop indices {sorted(contexts)} for {len(hop_rows)} passages")
        question = reply.question.strip().strip('"').strip()
        reason = self._reject(question, reply.answer, set())
        if reason is None and any(looks_like_injection(c) for c in contexts.values()):
            reason = "injection"
        if reason is not None:
            raise DropError(reason, question[:200])
        return {
            "qa_id": None,
            "question": question,
            "answer": reply.answer,
            "query_type": "multi_hop",
            "complexity": reply.complexity,
            "hops": len(hop_rows),
            "positive_chunk_ids": ids,
            "hop_contexts": [contexts[n][:300] for n in range(1, len(hop_rows) + 1)],
            "doc_ids": list(dict.fromkeys(r["doc_id"] for r in hop_rows)),
            "generator": self.name,
        }


def build_llm_generator(settings: LLMSettings) -> LLMQuestionGenerator:
    """The litellm-backed generator for ``settings`` (what the Dagster resource calls)."""
    return LLMQuestionGenerator(settings)


__all__ = [
    "GENERATOR_VERSION",
    "LLMEndpointError",
    "LLMQuestionGenerator",
    "LLMSettings",
    "build_llm_generator",
    "looks_like_injection",
    "select_bundles",
]
