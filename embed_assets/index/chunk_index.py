"""A LanceDB table of chunk embeddings: the product's store and its search index.

The same table serves the round-trip filter, the miner and anything else that
needs "the base model's nearest chunks". Small corpora are searched exactly
(a flat scan is both exact and fast below ~100k rows); above
``ann_threshold`` rows an IVF-PQ index is built.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lancedb
import numpy as np
import polars as pl
import pyarrow as pa
from lancedb.index import FTS

from embed_assets.hashing import content_hash
from embed_assets.models import ENCODE_BATCH_SIZE, TextEncoder, embedding_dim, encode

log = logging.getLogger(__name__)

TABLE_NAME = "chunks"


@dataclass(frozen=True)
class ChunkIndex:
    """Handle on a LanceDB chunk table: ``uri`` (folder) + ``table`` name."""

    uri: str
    table: str = TABLE_NAME

    def open(self):
        return lancedb.connect(self.uri).open_table(self.table)

    def count(self) -> int:
        return self.open().count_rows()

    def has_ann_index(self) -> bool:
        return any("vector" in (ix.columns or []) for ix in self.open().list_indices())

    def has_text_index(self) -> bool:
        """Whether the chunk text is stored with a BM25 full-text index on it."""
        return any("text" in (ix.columns or []) for ix in self.open().list_indices())


class EmbeddingCache:
    """Vectors of one model by chunk content hash, in a LanceDB table of their own.

    A chunk id is the hash of its text, so a chunk whose text did not change is never embedded
    twice by the same model: a corpus that gained a few documents costs only their chunks'
    embeddings. Appends only; a killed run keeps every batch it finished.

    Args:
        uri: LanceDB folder.
        model_key: identifies the model's weights (see :func:`model_key`); one table per model.
        dim: embedding width.
        encoder: embeds the texts not cached yet (e.g. onnxruntime, see
            :func:`embed_assets.export.onnx_encoder.corpus_encoder`); default: the ``model``
            passed to :meth:`vectors`, in PyTorch.
    """

    def __init__(self, uri: str | Path, model_key: str, dim: int, encoder: TextEncoder | None = None):
        self.db = lancedb.connect(str(uri))
        self.table = f"embeddings_{model_key}"
        self.dim = dim
        schema = pa.schema(
            [pa.field("chunk_id", pa.string()), pa.field("vector", pa.list_(pa.float32(), dim))]
        )
        self.tbl = self.db.create_table(self.table, schema=schema, exist_ok=True)
        self.encoder = encoder
        self.computed = 0
        self.reused = 0

    def vectors(self, chunks: pl.DataFrame, model, encode_batch_size: int = ENCODE_BATCH_SIZE) -> np.ndarray:
        """Unit-normalised vectors of ``chunks`` (``chunk_id, text``), in row order: read from the
        cache when known, else encoded (with the cache's ``encoder``, or ``model``) and added to it."""
        ids = chunks["chunk_id"].to_list()
        known: dict[str, np.ndarray] = {}
        if ids and self.tbl.count_rows():
            quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in set(ids))
            found = self.tbl.search().where(f"chunk_id IN ({quoted})").select(["chunk_id", "vector"])
            rows = found.limit(len(ids)).to_arrow()
            flat = rows["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            known = dict(zip(rows["chunk_id"].to_pylist(), flat.reshape(-1, self.dim), strict=True))
        missing = [i for i, c in enumerate(ids) if c not in known]
        new = dict.fromkeys(ids[i] for i in missing)  # a text repeated in the batch is encoded once
        if new:
            texts = dict(zip(ids, chunks["text"].to_list(), strict=True))
            missing_texts = [texts[c] for c in new]
            if self.encoder is not None:
                vectors = self.encoder(missing_texts)
            else:
                vectors = encode(model, missing_texts, batch_size=encode_batch_size)
            self.tbl.add(
                pa.table(
                    {
                        "chunk_id": pa.array(list(new), pa.string()),
                        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.dim),
                    }
                )
            )
            known.update(zip(new, vectors, strict=True))
        self.computed += len(new)
        self.reused += len(ids) - len(missing)
        return (
            np.stack([known[c] for c in ids]).astype(np.float32)
            if ids
            else np.zeros((0, self.dim), np.float32)
        )

    def text_vectors(self, texts: list[str], model, encode_batch_size: int = ENCODE_BATCH_SIZE) -> np.ndarray:
        """:meth:`vectors` for texts without ids (questions), keyed by a hash of the text: the
        questions the quality filter embeds are not embedded again by the miner or the evaluation."""
        ids = [f"text-{content_hash(t)}" for t in texts]
        return self.vectors(pl.DataFrame({"chunk_id": ids, "text": texts}), model, encode_batch_size)


def model_key(model_path: str | Path) -> str:
    """A short id of a model's weights: the hash of its files when it is a local folder (two
    models saved to the same path are told apart), else of its name."""
    from embed_assets.hashing import stable_hash
    from embed_assets.lineage import file_sha256

    folder = Path(model_path)
    if folder.is_dir():
        files = sorted(
            p for p in folder.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".bin", ".json"}
        )
        # Several stages key on the same folder in one run: its files are read (~90 MB for the
        # default model) once per content signature, not once per call. A rewrite changes a
        # file's size or mtime and so misses the memo.
        stats = [(p, p.stat()) for p in files]
        signature = (str(folder.resolve()), tuple((str(p), s.st_size, s.st_mtime_ns) for p, s in stats))
        if signature not in _MODEL_KEYS:
            _MODEL_KEYS[signature] = stable_hash(
                [(str(p.relative_to(folder)), s.st_size, file_sha256(p)) for p, s in stats], 12
            )
        return _MODEL_KEYS[signature]
    return stable_hash(str(model_path), 12)


_MODEL_KEYS: dict[tuple, str] = {}  # model_key's memo: (folder, its files' stats) -> key


def build_chunk_index(
    chunks: pl.DataFrame,
    model,
    uri: str | Path,
    *,
    table: str = TABLE_NAME,
    batch_size: int = 256,
    encode_batch_size: int = ENCODE_BATCH_SIZE,
    ann_threshold: int = 100_000,
    cache: EmbeddingCache | None = None,
) -> ChunkIndex:
    """Embed ``chunks`` with ``model`` and write them to a LanceDB table.

    Embedding streams in batches of ``batch_size`` chunks, appended to the table as
    they are done, so memory stays flat whatever the corpus size.

    Args:
        chunks: frame with ``chunk_id, doc_id, chunk_index, text``.
        model: a SentenceTransformer (embeddings are unit-normalised).
        uri: LanceDB folder.
        table: table name; an existing table is replaced.
        batch_size: chunks embedded and written per step.
        encode_batch_size: the encoder's own batch size.
        ann_threshold: build an IVF-PQ ANN index at or above this many rows.
        cache: reuse (and fill) these vectors by chunk content hash instead of encoding every chunk.
    """

    def vectors(part: pl.DataFrame) -> np.ndarray:
        if cache is not None:
            return cache.vectors(part, model, encode_batch_size)
        return encode(model, part["text"].to_list(), batch_size=encode_batch_size)

    batches = (
        (part, vectors(part))
        for part in (chunks.slice(s, batch_size) for s in range(0, chunks.height, batch_size))
    )
    return write_chunk_index(batches, embedding_dim(model), uri, table=table, ann_threshold=ann_threshold)


def write_chunk_index(
    batches: Iterable[tuple[pl.DataFrame, np.ndarray]],
    dim: int,
    uri: str | Path,
    *,
    table: str = TABLE_NAME,
    ann_threshold: int = 100_000,
    text_index: bool = True,
) -> ChunkIndex:
    """Write ``(chunk rows, unit-normalised vectors)`` batches to a new LanceDB table,
    one append per batch, then build the ANN index when the table is large enough.

    When the chunk rows carry a ``text`` column it is stored too, and (with
    ``text_index``) a BM25 full-text index is built on it for
    :mod:`~embed_assets.index.lexical`; vector-only batches (synthetic benchmarks) skip both.
    """
    db = lancedb.connect(str(uri))
    batches = iter(batches)
    first = next(batches, None)
    with_text = first is not None and "text" in first[0].columns
    fields = [
        pa.field("chunk_id", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("chunk_index", pa.int32()),
        pa.field("vector", pa.list_(pa.float32(), dim)),
    ]
    schema = pa.schema(fields + [pa.field("text", pa.string())] if with_text else fields)
    tbl = db.create_table(table, schema=schema, mode="overwrite")
    for part, vectors in itertools.chain([first] if first is not None else [], batches):
        columns = {
            "chunk_id": part["chunk_id"].to_arrow(),
            "doc_id": part["doc_id"].to_arrow(),
            "chunk_index": part["chunk_index"].cast(pl.Int32).to_arrow(),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim),
        }
        if with_text:
            columns["text"] = part["text"].to_arrow()
        tbl.add(pa.table(columns, schema=schema))
    n = tbl.count_rows()
    if n >= ann_threshold:
        # ~sqrt(n) partitions is LanceDB's own guidance; PQ sub-vectors must divide dim.
        partitions = max(16, int(np.sqrt(n)))
        sub_vectors = next(s for s in (dim // 8, dim // 4, dim // 2, 1) if s and dim % s == 0)
        log.info("building IVF_PQ index: %d rows, %d partitions", n, partitions)
        tbl.create_index(
            metric="dot", num_partitions=partitions, num_sub_vectors=sub_vectors, vector_column_name="vector"
        )
    if with_text and text_index and n:
        tbl.create_index("text", config=FTS(), replace=True)
    return ChunkIndex(uri=str(uri), table=table)


def read_vectors(index: ChunkIndex, chunk_ids: list[str] | None = None) -> np.ndarray:
    """The stored embeddings as a ``(n, dim)`` float32 matrix.

    Rows follow ``chunk_ids`` when given (every id must be in the table), else the
    table's own order. Lets later stages (e.g. base-model evaluation over the same
    texts) reuse the index's vectors instead of encoding the corpus again.
    """
    tbl = index.open().to_arrow().select(["chunk_id", "vector"])
    dim = tbl.schema.field("vector").type.list_size
    matrix = tbl["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    matrix = matrix.astype(np.float32, copy=False)
    if chunk_ids is None:
        return matrix
    row_of = {c: i for i, c in enumerate(tbl["chunk_id"].to_pylist())}
    missing = [c for c in chunk_ids if c not in row_of]
    if missing:
        raise KeyError(f"{len(missing)} chunk ids are not in the index, e.g. {missing[:3]}")
    return matrix[[row_of[c] for c in chunk_ids]]


def search(
    index: ChunkIndex,
    query_vectors: np.ndarray,
    k: int,
    *,
    columns: tuple[str, ...] = ("chunk_id",),
    batch_size: int = 256,
    ann_batch_size: int = 32,
    nprobes: int = 32,
    refine_factor: int = 4,
) -> Iterator[tuple[int, dict[str, list], np.ndarray]]:
    """Yield ``(query_row, {column: values}, scores)`` best first, for each query vector.

    Queries are sent to LanceDB ``batch_size`` at a time (``ann_batch_size`` on an ANN
    index), so memory is bounded by the batch's results, never queries × corpus.

    Args:
        batch_size: queries per exact (flat) search; larger batches share one scan of the table.
        ann_batch_size: queries per ANN search. The refine step fetches ``k × refine_factor``
            full vectors per query; on 363k chunks a batch of 256 peaked 472 MB above the
            idle process against 125 MB for 32, which was also faster
            (``benchmarks/bench_ann_memory.py``).
        nprobes: IVF partitions searched per query.
        refine_factor: re-score ``k × refine_factor`` PQ candidates with exact vectors, so the
            scores returned (which the mining ceiling compares) are exact dot products.
    """
    tbl = index.open()
    ann = index.has_ann_index()
    batch_size = ann_batch_size if ann else batch_size
    for start in range(0, len(query_vectors), batch_size):
        q = query_vectors[start : start + batch_size]
        # Naming _distance (read below) keeps lance from logging a deprecation warning per batch.
        builder = tbl.search(q).distance_type("dot").limit(k).select([*columns, "_distance"])
        builder = (
            builder.nprobes(nprobes).refine_factor(refine_factor) if ann else builder.bypass_vector_index()
        )
        res = builder.to_arrow()
        qi = (
            res["query_index"].to_numpy()
            if "query_index" in res.column_names
            else np.zeros(res.num_rows, int)
        )
        values = {c: res[c].to_pylist() for c in columns}
        # LanceDB's dot "distance" is 1 - dot product.
        scores = 1.0 - res["_distance"].to_numpy()
        order = np.lexsort((-scores, qi))
        bounds = np.searchsorted(qi[order], np.arange(len(q) + 1))
        for j in range(len(q)):
            sel = order[bounds[j] : bounds[j + 1]]
            yield start + j, {c: [v[s] for s in sel] for c, v in values.items()}, scores[sel]
