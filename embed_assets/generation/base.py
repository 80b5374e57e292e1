"""The question-generator interface and the synthetic QA record.

Every backend (the model-free template generator, LLMs through litellm, the
embedded GGUF model) takes the same chunk frame and returns the same QA frame,
so the rest of the pipeline never knows which one ran.

Chunk frame columns used by generators (see ``embed_assets.ingest.chunking``):
``chunk_id, doc_id, doc_path, chunk_index, title, text, n_tokens``.

QA frame columns (``QA_SCHEMA``):

- ``qa_id``            content hash of (question, positive ids)
- ``question``         the query text, as a user would type it
- ``answer``           a short answer drawn from the chunk(s), or "" when the backend writes none
- ``query_type``       factual | procedural | causal | comparative | keyword | multi_hop
- ``complexity``       1 (lookup) .. 5 (synthesis)
- ``hops``             number of chunks needed to answer (1 for single-hop)
- ``positive_chunk_ids`` every chunk that answers the question (multi-hop: one per hop)
- ``hop_contexts``     one-line summary of what each hop contributes, aligned with the ids
- ``doc_ids``          source documents of the positives (used for grouped splitting)
- ``generator``        backend name and version, for lineage
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import polars as pl

from embed_assets.hashing import stable_hash

QA_SCHEMA: dict[str, pl.DataType] = {
    "qa_id": pl.String,
    "question": pl.String,
    "answer": pl.String,
    "query_type": pl.String,
    "complexity": pl.Int8,
    "hops": pl.Int8,
    "positive_chunk_ids": pl.List(pl.String),
    "hop_contexts": pl.List(pl.String),
    "doc_ids": pl.List(pl.String),
    "generator": pl.String,
}

QUERY_TYPES = ("factual", "procedural", "causal", "comparative", "keyword", "multi_hop")


def make_qa_id(question: str, positive_chunk_ids: list[str]) -> str:
    return stable_hash({"q": question.strip().lower(), "p": sorted(positive_chunk_ids)})


def empty_qa_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=QA_SCHEMA)


def qa_frame(records: list[dict]) -> pl.DataFrame:
    """Build a QA frame from dict records, filling ``qa_id`` and enforcing the schema."""
    if not records:
        return empty_qa_frame()
    rows = []
    for r in records:
        row = {k: r.get(k) for k in QA_SCHEMA}
        row["qa_id"] = row["qa_id"] or make_qa_id(row["question"], row["positive_chunk_ids"])
        row["answer"] = row["answer"] or ""
        row["hop_contexts"] = row["hop_contexts"] or [""] * len(row["positive_chunk_ids"])
        rows.append(row)
    return pl.DataFrame(rows, schema=QA_SCHEMA).unique("qa_id", keep="first", maintain_order=True)


@dataclass
class GenerationResult:
    """What a generator returns: the QA frame plus counters for metadata.

    ``stats`` holds integer counters such as ``llm_calls``, ``cache_hits`` and
    ``dropped:<reason>``; they are shown in the Dagster UI as-is.
    """

    qa: pl.DataFrame
    stats: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class QuestionGenerator(Protocol):
    """A backend that writes questions for chunks.

    Implementations must be deterministic for a fixed ``seed`` and inputs
    (LLM backends get there through their response cache).
    """

    name: str

    def generate(
        self,
        chunks: pl.DataFrame,
        *,
        questions_per_chunk: int,
        multi_hop_questions: int,
        seed: int,
    ) -> GenerationResult:
        """Write ``questions_per_chunk`` single-hop questions per chunk and up to
        ``multi_hop_questions`` multi-hop questions over related chunks."""
        ...
