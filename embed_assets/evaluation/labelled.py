"""Queries written by people, judged against the user's own documents.

The synthetic test split says how well the model answers the generator's questions; a
team that has even a few dozen real queries with known answers (support tickets and the
runbook that solved them, search logs with clicks) should be able to check the claim on
those. They come as a BEIR-style folder, ``queries.jsonl`` plus ``qrels/<split>.tsv``,
whose corpus ids name the *documents* the pipeline read: the file path relative to the
corpus folder, the ``_id`` of a JSON Lines corpus, or a production table's id. The model
searches the chunks, and a document's score is its best chunk's (MaxP, Dai & Callan 2019),
so a judgment on a document is met by whichever of its chunks ranks highest.

No labelled query reaches training as a training example. They score models; and a split the user
sets aside for it (``finetuned_model.selection_queries_split``, never the evaluation's split) may
choose among models: the recipe, the checkpoint and the merge weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from embed_assets.evaluation.metrics import Qrels, Run
from embed_assets.evaluation.retrieval import read_qrels, read_queries
from embed_assets.hashing import stable_hash


class LabelledQueriesError(ValueError):
    """The labelled query set is missing, malformed, or names none of the corpus' documents."""


@dataclass
class LabelledQueries:
    """Labelled queries whose judgments name documents of the corpus.

    Attributes:
        queries: ``{query_id: text}``, only queries left with a relevant known document.
        qrels: ``{query_id: {doc_path: grade}}`` on known documents.
        source: ``<folder>/qrels/<split>.tsv``, for lineage.
        fingerprint: content hash of the queries and judgments used, for lineage.
        skipped: counts of what was left out, by reason: ``judgment_unknown_document``
            (the id names no document read), ``query_without_relevant_document`` (no
            judgment with a grade above 0 is left), ``query_without_text`` (judged in the
            split but absent from ``queries.jsonl``).
        unknown_documents: a few of the unknown ids, to show in metadata.
    """

    queries: dict[str, str]
    qrels: Qrels
    source: str
    fingerprint: str
    skipped: dict[str, int] = field(default_factory=dict)
    unknown_documents: list[str] = field(default_factory=list)


def document_aliases(
    doc_paths: Iterable[str], other_names: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The names a judgment may use for each document, mapped to its ``doc_path``: the
    ``doc_path`` itself; for a row of a production LanceDB table (``lancedb://<table>/<id>``),
    the bare ``<id>``; and ``other_names`` (``{name: doc_path}``: the duplicates the reader
    skipped, see ``source_documents``' ``aliases`` column)."""
    aliases: dict[str, str] = {}
    for name, path in [*((p, p) for p in doc_paths), *(other_names or {}).items()]:
        aliases.setdefault(name, path)
        if name.startswith("lancedb://"):
            aliases.setdefault(name.rsplit("/", 1)[-1], path)
    return aliases


def load_labelled_queries(
    folder: str | Path, split: str, doc_paths: Iterable[str], other_names: Mapping[str, str] | None = None
) -> LabelledQueries:
    """Read ``folder/queries.jsonl`` and ``folder/qrels/<split>.tsv`` and keep the judgments
    on documents in ``doc_paths``.

    Args:
        folder: BEIR-style folder of labelled queries (no ``corpus.jsonl`` needed: the corpus
            is the pipeline's own documents).
        split: which qrels file to read.
        doc_paths: the ``doc_path`` of every document the pipeline read.
        other_names: ``{name: doc_path}`` for documents read under several names (duplicates).

    Raises:
        LabelledQueriesError: a file is missing or malformed (named with its line), or no
            judged query names a known document (a few unknown ids and a few known names are
            quoted, since a mismatch of naming is the usual cause).
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    aliases = document_aliases(doc_paths, other_names)
    try:
        raw = read_qrels(qrels_path)
        texts = read_queries(folder / "queries.jsonl", wanted=raw)
    except (FileNotFoundError, ValueError) as e:
        raise LabelledQueriesError(f"labelled queries: {e}") from e
    skipped = {"judgment_unknown_document": 0, "query_without_relevant_document": 0, "query_without_text": 0}
    unknown: list[str] = []
    qrels: Qrels = {}
    for qid, judged in raw.items():
        if qid not in texts:
            skipped["query_without_text"] += 1
            continue
        known: dict[str, int] = {}
        for ref, grade in judged.items():
            if ref in aliases:
                known[aliases[ref]] = max(grade, known.get(aliases[ref], grade))
            else:
                skipped["judgment_unknown_document"] += 1
                if len(unknown) < 5:
                    unknown.append(ref)
        if any(g > 0 for g in known.values()):
            qrels[qid] = known
        else:
            skipped["query_without_relevant_document"] += 1
    if not qrels:
        examples = ", ".join(repr(p) for p in list(aliases)[:3])
        raise LabelledQueriesError(
            f"labelled queries in {qrels_path} name none of the corpus' documents "
            f"(e.g. {unknown[:3]}); judgments must name a document as the pipeline reads it, "
            f"e.g. {examples}"
        )
    queries = {q: texts[q] for q in qrels}
    return LabelledQueries(
        queries=queries,
        qrels=qrels,
        source=str(qrels_path),
        fingerprint=stable_hash({"queries": queries, "qrels": qrels}),
        skipped=skipped,
        unknown_documents=unknown,
    )


def without_queries_that_chose(labelled: LabelledQueries, chose: Mapping[str, str]) -> LabelledQueries:
    """``labelled`` less the queries that chose the model being evaluated (the same id with the
    same text), counted in ``skipped`` as ``query_chose_the_model``: a query that picked the
    recipe, checkpoint or merge weight would flatter the model it picked.

    One run config cannot evaluate on its own selection split (``run_config_errors`` refuses
    it); this covers a later run that evaluates an earlier run's model, whose value records the
    queries that chose it (``selection_query_texts``).

    Raises:
        LabelledQueriesError: every query chose the model, so none is left to evaluate on.
    """
    overlap = {q for q, text in labelled.queries.items() if chose.get(q) == text}
    if not overlap:
        return labelled
    if overlap == set(labelled.queries):
        raise LabelledQueriesError(
            f"labelled queries in {labelled.source}: all {len(overlap)} of them chose the fine-tuned model "
            "(finetuned_model.selection_queries_split); evaluate on another split"
        )
    queries = {q: t for q, t in labelled.queries.items() if q not in overlap}
    qrels = {q: labelled.qrels[q] for q in queries}
    return replace(
        labelled,
        queries=queries,
        qrels=qrels,
        fingerprint=stable_hash({"queries": queries, "qrels": qrels}),
        skipped={**labelled.skipped, "query_chose_the_model": len(overlap)},
    )


def labelled_queries_of(folder: str | Path, split: str, documents: pl.DataFrame) -> LabelledQueries:
    """:func:`load_labelled_queries` on the documents ``source_documents`` read: its ``doc_path``
    column, and its ``aliases`` column (the names of the duplicates it skipped) when present."""
    other_names: dict[str, str] = {}
    if "aliases" in documents.columns:  # documents read before aliases were kept have none
        dups = documents.select("doc_path", "aliases").explode("aliases").drop_nulls()
        other_names = dict(zip(dups["aliases"], dups["doc_path"], strict=True))
    return load_labelled_queries(folder, split, documents["doc_path"], other_names=other_names)


def document_run(chunk_run: Run, chunk_document: Mapping[str, str], top_k: int = 100) -> Run:
    """Turn a chunk ranking into a document ranking: each document scores its best chunk.

    Args:
        chunk_run: ``{query_id: {chunk_id: score}}``.
        chunk_document: ``{chunk_id: doc_path}``.
        top_k: documents kept per query. The chunk ranking should be deep enough to hold
            that many distinct documents (several chunks of one document collapse into one).
    """
    run: Run = {}
    for qid, hits in chunk_run.items():
        best: dict[str, float] = {}
        for chunk_id, score in hits.items():
            doc = chunk_document[chunk_id]
            if score > best.get(doc, float("-inf")):
                best[doc] = score
        run[qid] = dict(sorted(best.items(), key=lambda kv: -kv[1])[:top_k])
    return run
