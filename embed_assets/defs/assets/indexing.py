"""The base model's LanceDB chunk index, shared by the round-trip filter and the miner."""

import time
from pathlib import Path

import dagster as dg
import lancedb
import polars as pl

from embed_assets.defs.metadata import stage_metrics
from embed_assets.defs.resources import HOME_POOL, ArtifactStoreResource, BaseModelResource
from embed_assets.export.onnx_encoder import corpus_encoder
from embed_assets.index.chunk_index import ChunkIndex, EmbeddingCache, build_chunk_index, model_key
from embed_assets.lineage import artifact_hashes, code_version, data_version
from embed_assets.models import embedding_dim
from embed_assets.recipe.selection import CorpusVectors


@dg.asset(
    pool=HOME_POOL,
    group_name="indexing",
    kinds={"lancedb"},
    code_version=code_version(__name__, "embed_assets.index.chunk_index", "embed_assets.export.onnx_encoder"),
    description="Base-model embeddings and text of every chunk in a LanceDB table: exact search for small "
    "corpora, an IVF-PQ index above the threshold, and a BM25 full-text index on the text. Used for round-trip "
    "filtering (dense and lexical) and hard-negative mining. One table per chunk set and model, never "
    "rewritten; vectors are cached by chunk content hash, so unchanged chunks are never embedded again. "
    "On CPU, embedding runs in onnxruntime on the model's ONNX export (the server's graph).",
)
def base_chunk_index(
    context: dg.AssetExecutionContext,
    document_chunks: pl.DataFrame,
    base_model: BaseModelResource,
    store: ArtifactStoreResource,
) -> dg.MaterializeResult[dict]:
    start = time.perf_counter()
    uri = store.path("lancedb")
    model = base_model.load()
    key = model_key(base_model.path())
    version = data_version(
        document_chunks.select("chunk_id", "doc_id", "chunk_index", "text"), {"model": key}
    )
    table = f"chunks_{version}"
    encoder = corpus_encoder(model, base_model.path(), store.path("encoders", f"base-{key}"))
    cache = EmbeddingCache(uri, key, embedding_dim(model), encoder.encode)
    index = ChunkIndex(str(uri), table)
    reused_table = _complete(index, document_chunks.height)
    if not reused_table:
        index = build_chunk_index(document_chunks, model, uri, table=table, cache=cache)
    tbl = index.open()
    seconds = time.perf_counter() - start
    return dg.MaterializeResult(
        value={
            "uri": index.uri,
            "table": index.table,
            "table_version": tbl.version,
            "rows": index.count(),
            "model": base_model.path(),
            "model_key": key,
            # where the base model's texts are embedded (quality, mining and evaluation use it too)
            "encoder_dir": str(encoder.export_dir) if encoder.export_dir else None,
        },
        data_version=dg.DataVersion(version),
        metadata={
            **_metadata(index, tbl.version, cache, reused_table),
            "chunks_per_second": round(document_chunks.height / max(seconds, 1e-9), 1),
            **encoder.metadata(),
            **stage_metrics(start),
        },
    )


def _complete(index: ChunkIndex, rows: int) -> bool:
    """Whether the table holds all ``rows`` chunks and its text index, so it is reused as it is."""
    # The same chunks and model were indexed before: the table is reused as it is. A build
    # killed half-way left fewer rows (or no text index yet): it is built again.
    return (
        index.table in lancedb.connect(index.uri).table_names()
        and index.count() == rows
        and index.has_text_index()
    )


def _manifest(uri: Path, table: str, version: int) -> Path:
    """The manifest file of the table's ``version`` (its ``_versions`` folder when there is none)."""
    # The manifest pins the table version's content. LanceDB names it by the version, or (its V2
    # naming scheme) by 2**64 - 1 - version so that the newest sorts first.
    versions = uri / f"{table}.lance" / "_versions"
    return next(
        (
            m
            for m in (versions / f"{version}.manifest", versions / f"{2**64 - 1 - version}.manifest")
            if m.is_file()
        ),
        versions,
    )


def _metadata(index: ChunkIndex, version: int, cache: EmbeddingCache, reused_table: bool) -> dict:
    """The table (rows, where, which version, its files' hashes), and what was built and embedded."""
    uri = Path(index.uri)
    return {
        "rows": index.count(),
        "uri": dg.MetadataValue.path(str(uri.resolve())),
        "table": index.table,
        "table_version": version,
        "artifacts": dg.MetadataValue.json(artifact_hashes(_manifest(uri, index.table, version))),
        "reused_table": reused_table,
        "embeddings_computed": cache.computed,
        "embeddings_reused": cache.reused,
        "ann_index": index.has_ann_index(),
        "text_index": index.has_text_index(),
    }


def base_embedding_cache(base_chunk_index: dict, model) -> EmbeddingCache | None:
    """The embedding cache of the model ``base_chunk_index`` was built with, for other texts
    (questions, evaluation documents): ``partial(cache.text_vectors, model=model)`` embeds a text
    only the first time any stage or run asks for it (the quality filter's questions are the
    miner's and the evaluation's), with the encoder the index used. None for an index value
    that does not name its model's key (callers then encode)."""
    key = base_chunk_index.get("model_key")
    if not key:
        return None
    export_dir = base_chunk_index.get("encoder_dir")
    encoder = corpus_encoder(model, base_chunk_index["model"], export_dir).encode if export_dir else None
    return EmbeddingCache(base_chunk_index["uri"], key, embedding_dim(model), encoder)


def base_corpus_vectors(base_chunk_index: dict, base_model_path: str) -> CorpusVectors | None:
    """A :data:`~embed_assets.recipe.selection.CorpusVectors` that reads the base model's vectors
    of known chunks from the index's embedding cache (the validation chunks were all indexed),
    so scoring the base model on validation embeds only its questions. None when the index was
    built with another model than ``base_model_path`` (or does not name its model)."""
    if base_chunk_index.get("model_key") != model_key(base_model_path):
        return None

    def vectors(model, corpus: dict[str, str]):
        cache = base_embedding_cache(base_chunk_index, model)
        return cache.vectors(pl.DataFrame({"chunk_id": list(corpus), "text": list(corpus.values())}), model)

    return vectors
