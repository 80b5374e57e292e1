"""A deterministic, model-free question generator ("template" backend).

It needs no LLM: it finds the rare identifiers a chunk defines (inline ``code``,
snake_case setting names, SQLSTATE-like codes, version numbers), picks the
sentence that mentions each one, and writes short questions from fixed
templates, several of them keyword-style like what users type into a search box.
Rarity is measured by document frequency over the whole chunk corpus, so
identifiers that appear everywhere (``postgres``, ``SELECT``) are not used.

It is the offline default of the pipeline's first issue. It is a weak teacher
compared with an LLM: its questions are lexical and extractive. The round-trip
filter downstream removes the ones the base model cannot even place.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import polars as pl

from embed_assets.generation.base import GenerationResult, qa_frame
from embed_assets.generation.stopwords import ENGLISH_STOPWORDS

_CODE_SPAN = re.compile(r"`([^`\n]{2,48})`")
_SNAKE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
_SQLSTATE = re.compile(r"\b(?=[0-9A-Z]{5}\b)(?=[A-Z]*[0-9])[0-9A-Z]{5}\b")
# Only versions named as such: bare "23.3" is usually a section number.
_VERSION = re.compile(r"(?:PostgreSQL|[Vv]ersion|[Rr]elease)\s+(\d{1,2}\.\d{1,2}(?:\.\d{1,2})?)\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{2,}")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")

# Plus words that are everywhere in technical manuals and say nothing about a setting.
_STOPWORDS = ENGLISH_STOPWORDS | frozenset(
    "chapter default example note parameter parameters section see set setting table uses value values".split()
)

SINGLE_HOP_TEMPLATES: tuple[tuple[str, str, int], ...] = (
    # (query_type, template, complexity)
    ("keyword", "{ident} {kw}", 1),
    ("keyword", "{kw} {ident}", 1),
    ("factual", "what is {ident}", 2),
    ("factual", "what does {ident} {verb}", 2),
    ("procedural", "how to use {ident} for {kw}", 3),
)
MULTI_HOP_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("comparative", "difference between {a} and {b}"),
    ("multi_hop", "{a} vs {b} {kw}"),
    ("multi_hop", "how do {a} and {b} relate"),
)


def _identifiers(text: str) -> list[str]:
    found: list[str] = []
    for m in _CODE_SPAN.finditer(text):
        span = m.group(1).strip()
        # Inline code can be a whole SQL statement; only short, single-token spans name things.
        if len(span.split()) == 1 and any(c.isalpha() for c in span) and len(span) >= 3:
            found.append(span)
    for rx in (_SNAKE, _SQLSTATE, _VERSION):
        found.extend(m.group(m.lastindex or 0) for m in rx.finditer(text))
    return list(dict.fromkeys(found))  # dedupe, keep first-occurrence order


def _body(text: str, title: str) -> str:
    return text[len(title) :].lstrip() if title and text.startswith(title) else text


def _sentence_with(body: str, ident: str) -> str:
    for sentence in _SENTENCE_SPLIT.split(body):
        if ident in sentence:
            return sentence.strip(" #*-|`")
    return ""


def _content_words(sentence: str, exclude: str, df: Counter, n_chunks: int, k: int) -> list[str]:
    words = []
    for w in _WORD.findall(sentence):
        lw = w.lower()
        if lw in _STOPWORDS or lw in exclude.lower() or lw in words:
            continue
        words.append(lw)
    # Most specific words first: inverse document frequency over chunks.
    words.sort(key=lambda w: -math.log((n_chunks + 1) / (df.get(w, 0) + 1)))
    return words[:k]


class TemplateQuestionGenerator:
    """Model-free questions from identifiers and their sentences.

    Args:
        max_identifier_df: an identifier present in more than this fraction of chunks is
            too common to make a discriminative query.
    """

    name = "template-v1"

    def __init__(self, max_identifier_df: float = 0.02):
        if not 0 < max_identifier_df <= 1:
            raise ValueError(f"max_identifier_df must be in (0, 1], got {max_identifier_df}")
        self.max_identifier_df = max_identifier_df

    def generate(
        self, chunks: pl.DataFrame, *, questions_per_chunk: int, multi_hop_questions: int, seed: int
    ) -> GenerationResult:
        n_chunks = max(chunks.height, 1)
        bodies = [_body(t, title) for t, title in zip(chunks["text"], chunks["title"], strict=True)]
        idents_per_chunk = [_identifiers(b) for b in bodies]
        ident_df = Counter(i for ids in idents_per_chunk for i in set(ids))
        word_df = Counter(w for b in bodies for w in {x.lower() for x in _WORD.findall(b)})
        max_df = max(2, int(self.max_identifier_df * n_chunks))

        records: list[dict] = []
        stats: Counter = Counter()
        rare_per_chunk: list[list[tuple[str, str]]] = []
        for row, body, idents in zip(chunks.iter_rows(named=True), bodies, idents_per_chunk, strict=True):
            rng = random.Random(f"{seed}:{row['chunk_id']}")
            rare = sorted((i for i in idents if ident_df[i] <= max_df), key=lambda i: ident_df[i])
            with_sentence = [(i, s) for i in rare if (s := _sentence_with(body, i))]
            rare_per_chunk.append(with_sentence)
            if not with_sentence:
                stats["chunks_without_identifier"] += 1
                # Fall back to a keyword query from the chunk's most specific sentence.
                sentences = [s for s in _SENTENCE_SPLIT.split(body) if len(_WORD.findall(s)) >= 5]
                if not sentences:
                    stats["chunks_without_question"] += 1
                    continue
                best = max(sentences, key=lambda s: len(_content_words(s, "", word_df, n_chunks, 8)))
                kws = _content_words(best, "", word_df, n_chunks, 4)
                if len(kws) >= 3:
                    records.append(self._record(" ".join(kws), best, "keyword", 1, [row], [best]))
                continue
            for ident, sentence in with_sentence[:questions_per_chunk]:
                qtype, template, complexity = rng.choice(SINGLE_HOP_TEMPLATES)
                kws = _content_words(sentence, ident, word_df, n_chunks, 2) or ["configuration"]
                question = template.format(
                    ident=ident, kw=" ".join(kws), verb=rng.choice(("do", "control", "mean", "affect"))
                )
                records.append(self._record(question, sentence, qtype, complexity, [row], [sentence]))

        records.extend(self._multi_hop(chunks, rare_per_chunk, word_df, n_chunks, multi_hop_questions, seed))
        qa = qa_frame(records)
        stats["generated_single"] = int((qa["hops"] == 1).sum())
        stats["generated_multi_hop"] = int((qa["hops"] > 1).sum())
        return GenerationResult(qa=qa, stats=dict(stats))

    def _multi_hop(self, chunks, rare_per_chunk, word_df, n_chunks, limit, seed) -> list[dict]:
        """Pair chunks of one document that each define a different rare identifier."""
        if limit <= 0:
            return []
        rng = random.Random(f"{seed}:multi_hop")
        rows = list(chunks.iter_rows(named=True))
        by_doc: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if rare_per_chunk[i]:
                by_doc.setdefault(row["doc_id"], []).append(i)
        candidates = []
        for idx in by_doc.values():
            for a, b in zip(idx, idx[1:], strict=False):
                # Adjacent chunks overlap; skip one so the two hops hold different facts.
                candidates.extend([(a, b)] if rows[b]["chunk_index"] - rows[a]["chunk_index"] > 1 else [])
            for a, b in zip(idx, idx[2:], strict=False):
                candidates.append((a, b))
        rng.shuffle(candidates)
        out = []
        for a, b in candidates[:limit]:
            (ia, sa), (ib, sb) = rare_per_chunk[a][0], rare_per_chunk[b][0]
            if ia == ib or ia in rows[b]["text"] or ib in rows[a]["text"]:
                continue
            qtype, template = rng.choice(MULTI_HOP_TEMPLATES)
            kws = _content_words(sa + " " + sb, ia + ib, word_df, n_chunks, 1) or ["settings"]
            question = template.format(a=ia, b=ib, kw=kws[0])
            out.append(self._record(question, f"{sa} {sb}", qtype, 4, [rows[a], rows[b]], [sa, sb]))
        return out

    def _record(self, question, answer, qtype, complexity, rows, contexts) -> dict:
        return {
            "qa_id": None,
            "question": question.strip(),
            "answer": answer[:500],
            "query_type": qtype,
            "complexity": complexity,
            "hops": len(rows),
            "positive_chunk_ids": [r["chunk_id"] for r in rows],
            "hop_contexts": [c[:200] for c in contexts],
            "doc_ids": list(dict.fromkeys(r["doc_id"] for r in rows)),
            "generator": self.name,
        }
