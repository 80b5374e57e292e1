"""Dense retrieval over a BEIR folder, for evaluating a bi-encoder."""

from __future__ import annotations

import csv
import json
from collections.abc import Container
from pathlib import Path

import numpy as np
import torch
from sentence_transformers.util import semantic_search

from embed_assets.evaluation.metrics import Qrels, Run
from embed_assets.models import ENCODE_BATCH_SIZE, TextEncoder, text_encoder


def read_qrels(path: str | Path) -> Qrels:
    """``query-id<TAB>corpus-id<TAB>score`` lines (BEIR's ``qrels/<split>.tsv``), header optional.

    Raises:
        FileNotFoundError: the file is missing (the message names it).
        ValueError: a line is not three tab-separated fields with an integer score
            (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no qrels file: {path}")
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise ValueError(f"{path}:{n}: expected query-id, corpus-id, score; got {len(row)} fields")
            qid, cid, score = (x.strip() for x in row)
            try:
                grade = int(score)
            except ValueError:
                if n == 1:  # the header line
                    continue
                raise ValueError(f"{path}:{n}: score {score!r} is not an integer") from None
            qrels.setdefault(qid, {})[cid] = grade
    return qrels


def read_queries(path: str | Path, wanted: Container[str] | None = None) -> dict[str, str]:
    """``{"_id", "text"}`` objects, one per line (BEIR's ``queries.jsonl``); only the ids in
    ``wanted`` when given.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a line is not a JSON object with ``_id`` and ``text`` (file and line named).
    """
    return {
        qid: d["text"] for qid, d, _ in _id_text_records(path, "queries") if wanted is None or qid in wanted
    }


def _id_text_records(path: str | Path, what: str):
    """``(str(_id), object, line number)`` for each non-blank line of a BEIR JSON Lines file.

    Raises FileNotFoundError naming ``what`` when the file is missing, ValueError naming the
    file and line when a line is not a JSON object with ``_id`` and ``text``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file: {path}")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                doc_id, _ = str(d["_id"]), d["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{n}: expected a JSON object with _id and text") from None
            yield doc_id, d, n


def read_beir_corpus(path: str | Path) -> dict[str, tuple[str, str]]:
    """BEIR's ``corpus.jsonl`` as ``{_id: (title, text)}``, stripped.

    Documents with neither title nor text (Cranfield has two) are left out: nothing can
    retrieve them by their content, and a judgment naming one simply counts as a relevant
    document no model finds. A missing or non-string title is no title.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a line is not a JSON object with an ``_id`` and a string ``text``
            (file and line named).
    """
    corpus: dict[str, tuple[str, str]] = {}
    for doc_id, d, n in _id_text_records(path, "corpus"):
        text = d["text"]
        if not isinstance(text, str):
            raise ValueError(f"{path}:{n}: text of {doc_id!r} is not a string")
        title = d.get("title") if isinstance(d.get("title"), str) else ""
        if title.strip() or text.strip():
            corpus[doc_id] = (title.strip(), text.strip())
    return corpus


def joined_text(title: str, text: str) -> str:
    """Title and text joined the way BEIR's own models do."""
    return f"{title} {text}".strip() if title else text


def load_beir(folder: str | Path, split: str = "test") -> tuple[dict[str, str], dict[str, str], Qrels]:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (BEIR layout).

    Only queries that have judgments in the split are returned. Title and text are
    joined the way BEIR's own models do (:func:`joined_text`); see :func:`read_beir_corpus`
    for what is left out.
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        raise FileNotFoundError(f"no qrels for split {split!r}: {qrels_path}")
    qrels = read_qrels(qrels_path)
    corpus = {d: joined_text(*tt) for d, tt in read_beir_corpus(folder / "corpus.jsonl").items()}
    return corpus, read_queries(folder / "queries.jsonl", wanted=qrels), qrels


def retrieve(
    model,
    corpus: dict[str, str],
    queries: dict[str, str],
    top_k: int = 100,
    batch_size: int = ENCODE_BATCH_SIZE,
    corpus_vectors: np.ndarray | None = None,
    embed: TextEncoder | None = None,
) -> Run:
    """Exact cosine search of every query over the corpus; ``{qid: {doc_id: score}}``.

    ``semantic_search`` scores the corpus in chunks, so memory is bounded by
    queries × chunk rather than queries × corpus.

    Args:
        corpus_vectors: unit-normalised embeddings of ``corpus`` by the same ``model``,
            row-aligned with its iteration order (e.g. read back from the LanceDB index
            with :func:`embed_assets.index.chunk_index.read_vectors`); skips re-encoding.
        embed: gives ``model``'s unit-normalised vectors of texts, e.g. through an embedding
            cache (default: encode them with ``batch_size``).
    """
    embed = text_encoder(model, embed, batch_size)
    doc_ids = list(corpus)
    if corpus_vectors is None:
        doc_vec = embed([corpus[d] for d in doc_ids])
    else:
        if len(corpus_vectors) != len(doc_ids):
            raise ValueError(f"corpus_vectors has {len(corpus_vectors)} rows for {len(doc_ids)} documents")
        doc_vec = np.ascontiguousarray(corpus_vectors, dtype=np.float32)
    qids = list(queries)
    q_vec = embed([queries[q] for q in qids])
    hits = semantic_search(
        torch.from_numpy(q_vec),
        torch.from_numpy(doc_vec),
        top_k=min(top_k, len(doc_ids)),
        corpus_chunk_size=50_000,
    )
    return {
        qid: {doc_ids[h["corpus_id"]]: float(h["score"]) for h in hs}
        for qid, hs in zip(qids, hits, strict=True)
    }
