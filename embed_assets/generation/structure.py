"""A deterministic, model-free question generator from document structure ("structure" backend).

Real search queries over a document collection often look like the documents'
own titles ("Breast Cancer Cells Feed on Cholesterol") or like a short topic
phrase ("statin use", "brazil nuts"). Both can be read off a document without a
language model:

- **title questions**: the document title, cleaned (trailing period, bracketed
  notes such as ``[Article in German]`` and ellipses removed), asks for the
  document's first chunk. Titles are written by people to say what a document
  is about, so they are the closest model-free stand-in for a real query.
- **key-phrase questions**: short phrases (1–3 words) of the title that the body
  repeats, ranked by ``log(1 + count in chunk) × Σ idf`` (document frequency
  over the chunk corpus), in the spirit of RAKE (Rose et al. 2010) and the
  title-anchored keyphrases of Kim et al. (2010). A chunk whose title yields no
  phrase falls back to its most specific repeated body phrase.

The positive's contextual title header must not be shown to the model together
with a question made from that title, or the pair is a verbatim copy that teaches
nothing: train on :func:`strip_title` of the chunk text (the benchmark does;
evaluation keeps the full text).

Compared with the template generator (identifiers of technical manuals) this
one needs titles or repeated phrases, which scientific abstracts, articles and
wiki pages have. Its questions are extractive, so downstream filters still apply.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import polars as pl

from embed_assets.generation.base import GenerationResult, qa_frame
from embed_assets.generation.stopwords import ENGLISH_STOPWORDS

# General English function words only: domain-common words are down-weighted by idf instead.
STOPWORDS = ENGLISH_STOPWORDS

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
_BRACKETED = re.compile(r"\s*\[[^\]]*\]\s*")
_SPACES = re.compile(r"\s+")


def clean_title(title: str) -> str:
    """A title as a query: no bracketed notes, ellipsis or trailing period."""
    t = _BRACKETED.sub(" ", title or "")
    t = _SPACES.sub(" ", t).strip()
    t = re.sub(r"(\.{3}|…)$", "", t).strip()
    return t.rstrip(" .;,")


def strip_title(text: str, title: str) -> str:
    """``text`` without a leading title header (as added by the chunker), else unchanged."""
    if title and text.startswith(title):
        rest = text[len(title) :].lstrip(" \n\t.:")
        return rest or text
    return text


def _words(text: str) -> list[str]:
    return [w.lower().strip("'-") for w in _TOKEN.findall(text)]


def _is_content(word: str) -> bool:
    return len(word) >= 3 and word not in STOPWORDS and not word.replace("-", "").isdigit()


def _runs(text: str) -> list[list[str]]:
    """Maximal runs of content words, split at stopwords and punctuation (RAKE candidates)."""
    runs: list[list[str]] = []
    for piece in re.split(r"[,.;:!?()\[\]{}\"/]|\s[-–—]\s", text):
        run: list[str] = []
        for w in _words(piece):
            if _is_content(w):
                run.append(w)
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
    return runs


def _ngrams(runs: list[list[str]], max_words: int) -> list[tuple[str, ...]]:
    seen: dict[tuple[str, ...], None] = {}
    for run in runs:
        for n in range(1, max_words + 1):
            for i in range(len(run) - n + 1):
                seen.setdefault(tuple(run[i : i + n]), None)
    return list(seen)


def _phrase_count(phrase: tuple[str, ...], words: list[str]) -> int:
    n = len(phrase)
    return sum(tuple(words[i : i + n]) == phrase for i in range(len(words) - n + 1))


class StructureQuestionGenerator:
    """Model-free title and key-phrase questions.

    Args:
        kinds: which questions to write: ``"title"`` (the cleaned document title, for
            the document's first chunk), ``"title_main"`` (the part of a
            ``"Main: subtitle"`` title before the colon, when it is a phrase of its
            own), ``"keyphrase"`` (title phrases the chunk repeats).
        max_phrase_words: longest key phrase.
        min_title_words: a title with fewer content words is not used (e.g. "Introduction").
        max_phrase_df: a phrase whose words all appear in more than this share of
            chunks is too generic to ask for one chunk.
        max_phrase_positives: a key phrase picked for several chunks becomes *one*
            question whose positives are all of them (up to this many, in corpus order),
            instead of one near-duplicate question per chunk that the de-duplication
            filter would cut to a single, arbitrary chunk. Topic-style queries have many
            relevant documents; 1 keeps one question per chunk.
    """

    name = "structure-v1"
    # Title questions: the positive trains without its title header (generation.model_free.questions_from_title).
    questions_from_title = True
    KINDS = ("title", "title_main", "keyphrase")

    def __init__(
        self,
        kinds: tuple[str, ...] = ("title", "keyphrase"),
        max_phrase_words: int = 3,
        min_title_words: int = 2,
        max_phrase_df: float = 0.05,
        max_phrase_positives: int = 1,
    ):
        unknown = set(kinds) - set(self.KINDS)
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {self.KINDS}, got {kinds}")
        if max_phrase_words < 1:
            raise ValueError(f"max_phrase_words must be >= 1, got {max_phrase_words}")
        if not 0 < max_phrase_df <= 1:
            raise ValueError(f"max_phrase_df must be in (0, 1], got {max_phrase_df}")
        if max_phrase_positives < 1:
            raise ValueError(f"max_phrase_positives must be >= 1, got {max_phrase_positives}")
        self.kinds = tuple(kinds)
        self.max_phrase_words = max_phrase_words
        self.min_title_words = min_title_words
        self.max_phrase_df = max_phrase_df
        self.max_phrase_positives = max_phrase_positives

    def generate(
        self, chunks: pl.DataFrame, *, questions_per_chunk: int, multi_hop_questions: int = 0, seed: int = 0
    ) -> GenerationResult:
        """``questions_per_chunk`` caps the questions of one chunk (titles first, then
        key phrases). No multi-hop questions are written and nothing is random, so
        ``multi_hop_questions`` and ``seed`` are accepted for the interface only."""
        del multi_hop_questions, seed
        n_chunks = max(chunks.height, 1)
        titles = [clean_title(t or "") for t in chunks["title"]]
        bodies = [
            strip_title(text, raw or "") for text, raw in zip(chunks["text"], chunks["title"], strict=True)
        ]
        body_words = [_words(b) for b in bodies]
        df = Counter(w for ws in body_words for w in set(ws))
        idf = {w: math.log((n_chunks + 1) / (c + 1)) + 1.0 for w, c in df.items()}
        max_df = max(2, int(self.max_phrase_df * n_chunks))
        first_chunk: dict[str, int] = {}
        for i, (doc, idx) in enumerate(zip(chunks["doc_id"], chunks["chunk_index"], strict=True)):
            if doc not in first_chunk or idx < chunks["chunk_index"][first_chunk[doc]]:
                first_chunk[doc] = i

        records: list[dict] = []
        stats: Counter = Counter()
        for i, row in enumerate(chunks.iter_rows(named=True)):
            questions: list[tuple[str, str, int]] = []  # (question, query_type, complexity)
            title = titles[i]
            title_words = [w for w in _words(title) if _is_content(w)]
            is_first = first_chunk[row["doc_id"]] == i
            if len(title_words) < self.min_title_words:
                stats["chunks_without_usable_title"] += 1
            elif is_first:
                if "title" in self.kinds:
                    questions.append((title, "factual", 2))
                if "title_main" in self.kinds and ":" in title:
                    main = title.split(":", 1)[0].strip()
                    if len([w for w in _words(main) if _is_content(w)]) >= self.min_title_words:
                        questions.append((main, "factual", 2))
            if "keyphrase" in self.kinds:
                for phrase in self._keyphrases(title, bodies[i], body_words[i], idf, df, max_df):
                    questions.append((phrase, "keyword", 1))
            if not questions:
                stats["chunks_without_question"] += 1
            seen: set[str] = set()
            for question, qtype, complexity in questions:
                key = question.lower()
                if key in seen or len(seen) >= questions_per_chunk:
                    continue
                seen.add(key)
                stats[f"questions_{'keyphrase' if qtype == 'keyword' else 'title'}"] += 1
                records.append(self._record(question, qtype, complexity, row))
        if self.max_phrase_positives > 1:
            records = self._group_phrases(records, stats)
        qa = qa_frame(records)
        stats["generated_single"] = qa.height
        stats["generated_multi_hop"] = 0
        stats["llm_calls"] = 0
        return GenerationResult(qa=qa, stats=dict(stats))

    def _group_phrases(self, records: list[dict], stats: Counter) -> list[dict]:
        """One question per distinct key phrase, with every chunk it was picked for as a positive."""
        grouped: list[dict] = []
        by_phrase: dict[str, dict] = {}
        for rec in records:
            key = rec["question"].lower()
            first = by_phrase.get(key) if rec["query_type"] == "keyword" else None
            if first is None:
                if rec["query_type"] == "keyword":
                    by_phrase[key] = rec
                grouped.append(rec)
            elif len(first["positive_chunk_ids"]) < self.max_phrase_positives:
                first["positive_chunk_ids"] = [*first["positive_chunk_ids"], *rec["positive_chunk_ids"]]
                first["doc_ids"] = list(dict.fromkeys([*first["doc_ids"], *rec["doc_ids"]]))
                stats["keyphrase_positives_merged"] += 1
            else:
                stats["keyphrase_positives_over_cap"] += 1
        return grouped

    def _keyphrases(self, title, body, words, idf, df, max_df) -> list[str]:
        """Title n-grams the body repeats, best first; else the body's own repeated n-grams."""
        if not words:
            return []
        candidates = _ngrams(_runs(title), self.max_phrase_words)
        from_title = True
        scored = self._score(candidates, words, idf, df, max_df, min_count=1)
        if not scored:
            from_title = False
            candidates = _ngrams(_runs(body), min(2, self.max_phrase_words))
            scored = self._score(candidates, words, idf, df, max_df, min_count=3)
        picked: list[tuple[str, ...]] = []
        for _, phrase in scored:
            if any(set(phrase) & set(p) for p in picked):
                continue  # one question per topic: "grape" and "grape extract" overlap
            picked.append(phrase)
        limit = 2 if from_title else 1
        return [" ".join(p) for p in picked[:limit]]

    def _score(self, candidates, words, idf, df, max_df, min_count: int):
        scored = []
        for phrase in candidates:
            if all(df.get(w, 0) > max_df for w in phrase):
                continue  # every word is common in the corpus: not specific to this chunk
            count = _phrase_count(phrase, words)
            if count < min_count:
                continue
            score = math.log1p(count) * sum(idf.get(w, 1.0) for w in phrase)
            scored.append((score, phrase))
        # Highest score first; ties by the phrase itself so the order never depends on hashing.
        scored.sort(key=lambda x: (-x[0], x[1]))
        return scored

    def _record(self, question: str, qtype: str, complexity: int, row: dict) -> dict:
        return {
            "qa_id": None,
            "question": question,
            "answer": "",
            "query_type": qtype,
            "complexity": complexity,
            "hops": 1,
            "positive_chunk_ids": [row["chunk_id"]],
            "hop_contexts": [question[:200]],
            "doc_ids": [row["doc_id"]],
            "generator": self.name,
        }


__all__ = ["STOPWORDS", "StructureQuestionGenerator", "clean_title", "strip_title"]
