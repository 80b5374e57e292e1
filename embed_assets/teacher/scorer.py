"""Loading a teacher and scoring (query, passage) pairs with it, cached by content hash.

A teacher is any sentence-transformers ``CrossEncoder`` (a reranker: it reads query and passage
together) or any bi-encoder (query and passage embedded apart, scored by cosine). GPL (Wang et
al. 2022) labels every (query, positive, negative) triple with a cross-encoder; a bi-encoder
larger than the student is the teacher that ships offline here (:mod:`.offline`).

Scores are put on one scale whatever the teacher: a cross-encoder's sigmoid probability or a
bi-encoder's cosine, both at most 1, so score margins are comparable with the student's cosine
margins that MarginMSE fits to them.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embed_assets.hashing import content_hash
from embed_assets.models import ENCODE_BATCH_SIZE, ModelNotFoundError, best_device, resolve_model_path
from embed_assets.teacher.offline import ALIASES, offline_teacher_path

NO_TEACHER = "none"
TeacherKind = Literal["auto", "cross-encoder", "bi-encoder"]
SETTING = "resources.teacher.config.name_or_path"


class TeacherError(ValueError):
    """A teacher that cannot be used: it does not load, reads too few tokens, scores NaN or does
    not separate positives from random chunks. The message names the setting to change."""


def _config_architectures(path: str) -> list[str]:
    """``architectures`` of a model's ``config.json`` (a local folder, or a hub id in the local cache)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "config.json")
        except Exception:  # not a valid repo id: no cached config to read
            cached = None
        config = Path(cached) if isinstance(cached, str) else config
    try:
        return list(json.loads(config.read_text()).get("architectures") or [])
    except (OSError, ValueError):
        return []


def detect_kind(path: str) -> Literal["cross-encoder", "bi-encoder"]:
    """A sequence-classification head makes a cross-encoder; anything else is embedded as a bi-encoder."""
    return (
        "cross-encoder"
        if any(a.endswith("ForSequenceClassification") for a in _config_architectures(path))
        else "bi-encoder"
    )


@dataclass
class Teacher:
    """A loaded teacher.

    Args:
        name: as configured (``all-mpnet-base-v2``, a folder, a hub id).
        path: what was loaded.
        kind: ``cross-encoder`` or ``bi-encoder``.
        key: identifies its weights (cache keys and lineage).
        model: the sentence-transformers model.
        batch_size: pairs (cross-encoder) or texts (bi-encoder) per forward pass.
        embed: a bi-encoder's unit-normalised vectors of texts, e.g. through an embedding cache
            (:meth:`with_embedding_cache`); None encodes them.
    """

    name: str
    path: str
    kind: Literal["cross-encoder", "bi-encoder"]
    key: str
    model: Any
    batch_size: int = ENCODE_BATCH_SIZE
    embed: Callable[[list[str]], np.ndarray] | None = None

    def with_embedding_cache(self, lancedb_uri: str | Path) -> Teacher:
        """This teacher embedding through a content-hash cache in ``lancedb_uri`` (bi-encoders: a
        chunk the labelling embedded is not embedded again by the evaluation, nor by a rerun)."""
        if self.kind != "bi-encoder":
            return self
        from embed_assets.index.chunk_index import EmbeddingCache
        from embed_assets.models import embedding_dim

        cache = EmbeddingCache(lancedb_uri, self.key, embedding_dim(self.model))
        return replace(
            self, embed=partial(cache.text_vectors, model=self.model, encode_batch_size=self.batch_size)
        )

    @property
    def max_length(self) -> int:
        """Tokens the teacher reads per input (pair for a cross-encoder, text for a bi-encoder)."""
        return int(self.model.max_seq_length or self.model.tokenizer.model_max_length)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        tokenizer = self.model.tokenizer
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        """One score per ``(queries[i], passages[i])``: sigmoid probability or cosine."""
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
        if not queries:
            return np.zeros(0, np.float32)
        if self.kind == "cross-encoder":
            scores = self.model.predict(
                list(zip(queries, passages, strict=True)),
                batch_size=self.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
            return np.asarray(scores, dtype=np.float32).reshape(len(queries), -1)[:, -1]
        # Each distinct text is embedded once: a query meets several passages, a chunk many queries.
        texts = list(dict.fromkeys([*queries, *passages]))
        row = {t: i for i, t in enumerate(texts)}
        if self.embed is not None:
            vectors = self.embed(texts)
        else:
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
        q = vectors[[row[t] for t in queries]]
        p = vectors[[row[t] for t in passages]]
        return np.einsum("ij,ij->i", q, p)


def resolve_teacher_path(name_or_path: str) -> str:
    """The offline alias to its assembled folder; anything else as the base model resolves."""
    if name_or_path.lower() in ALIASES:
        return str(offline_teacher_path())
    return resolve_model_path(name_or_path, field_name=SETTING)


def load_teacher(
    name_or_path: str,
    kind: TeacherKind = "auto",
    *,
    batch_size: int = ENCODE_BATCH_SIZE,
    max_length: int | None = None,
    device: str | None = None,
) -> Teacher:
    """Load ``name_or_path`` as a teacher.

    Args:
        name_or_path: ``all-mpnet-base-v2`` (the offline teacher), a local folder or a hub id.
        kind: ``auto`` reads the model's config (a ``...ForSequenceClassification`` head is a
            cross-encoder), or force one.
        batch_size: pairs or texts per forward pass.
        max_length: tokens read per input; None keeps the model's own limit.
        device: torch device; None picks CUDA when present.

    Raises:
        TeacherError: naming ``resources.teacher.config.name_or_path`` when it does not load.
    """
    from embed_assets.index.chunk_index import model_key

    try:
        path = resolve_teacher_path(name_or_path)
        chosen = detect_kind(path) if kind == "auto" else kind
        device = device or best_device()
        if chosen == "cross-encoder":
            from sentence_transformers import CrossEncoder

            model = CrossEncoder(path, device=device)
        else:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(path, device=device)
        if max_length:
            model.max_seq_length = max_length
    except (ModelNotFoundError, OSError, ValueError, RuntimeError) as exc:
        raise TeacherError(f"{SETTING}: teacher {name_or_path!r} could not be loaded: {exc}") from exc
    model.eval()
    return Teacher(name_or_path, path, chosen, model_key(path), model, batch_size)


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS scores (teacher TEXT, pair TEXT, score REAL, PRIMARY KEY (teacher, pair))"
)


@dataclass
class TeacherScoreCache:
    """Teacher scores by (teacher weights, content hash of the pair), in SQLite.

    A rerun, or an incremental run whose corpus gained a few documents, scores only pairs it has
    not seen. Each batch is committed as it finishes, so a killed run keeps what it scored.

    Args:
        path: the SQLite file.
        batch_size: pairs scored and committed per step.
    """

    path: Path
    batch_size: int = 512
    hits: int = 0
    computed: int = 0
    _conn: sqlite3.Connection | None = field(default=None, repr=False)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path))
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(_SCHEMA)
        return self._conn

    @staticmethod
    def pair_key(query: str, passage: str) -> str:
        return content_hash(f"{query}\x1f{passage}", 32)

    def scores(self, teacher: Teacher, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        """Scores of the pairs ``(queries[i], passages[i])``, reading known ones from the cache.

        Raises:
            TeacherError: when the teacher returns a non-finite score (nothing is cached then).
        """
        keys = [self.pair_key(q, p) for q, p in zip(queries, passages, strict=True)]
        db = self._db()
        known: dict[str, float] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            part = unique[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = db.execute(
                f"SELECT pair, score FROM scores WHERE teacher = ? AND pair IN ({marks})",
                [teacher.key, *part],
            )
            known.update(rows.fetchall())
        todo = {k: i for i, k in enumerate(keys) if k not in known}  # one text pair scored once
        self.hits += len(keys) - len(todo)  # a pair asked for twice is scored once: the second is a hit
        order = list(todo)
        for start in range(0, len(order), self.batch_size):
            part = order[start : start + self.batch_size]
            idx = [todo[k] for k in part]
            new = teacher.score([queries[i] for i in idx], [passages[i] for i in idx])
            if not np.all(np.isfinite(new)):
                bad = int((~np.isfinite(new)).sum())
                raise TeacherError(
                    f"{SETTING}: teacher {teacher.name!r} gave {bad} non-finite (NaN or infinite) scores "
                    f"of {len(new)}, e.g. for the query {queries[idx[int(np.argmin(np.isfinite(new)))]][:80]!r}"
                )
            with db:
                db.executemany(
                    "INSERT OR REPLACE INTO scores VALUES (?, ?, ?)",
                    [(teacher.key, k, float(s)) for k, s in zip(part, new, strict=True)],
                )
            known.update(zip(part, (float(s) for s in new), strict=True))
            self.computed += len(part)
        return np.array([known[k] for k in keys], dtype=np.float32)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The probability that a positive outscores a negative (ties count half): Mann-Whitney's U
    over the product of the sizes. 0.5 is a teacher that cannot tell them apart."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    if not pos.size or not neg.size:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))
