"""The base model's LanceDB chunk index, shared by the round-trip filter and the miner."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.metadata import stage_metrics
from embed_assets.defs.resources import ArtifactStoreResource, BaseModelResource
from embed_assets.mining.index import build_chunk_index


@dg.asset(
    group_name="indexing",
    kinds={"lancedb"},
    description="Base-model embeddings and text of every chunk in a LanceDB table: exact search for small "
    "corpora, an IVF-PQ index above the threshold, and a BM25 full-text index on the text. Used for round-trip "
    "filtering (dense and lexical) and hard-negative mining.",
)
def base_chunk_index(
    context: dg.AssetExecutionContext,
    document_chunks: pl.DataFrame,
    base_model: BaseModelResource,
    store: ArtifactStoreResource,
) -> dg.MaterializeResult[dict]:
    start = time.perf_counter()
    uri = store.path("lancedb")
    index = build_chunk_index(document_chunks, base_model.load(), uri)
    seconds = time.perf_counter() - start
    return dg.MaterializeResult(
        value={"uri": index.uri, "table": index.table, "rows": index.count(), "model": base_model.path()},
        metadata={
            "rows": index.count(),
            "uri": dg.MetadataValue.path(str(uri.resolve())),
            "ann_index": index.has_ann_index(),
            "text_index": index.has_text_index(),
            "chunks_per_second": round(document_chunks.height / max(seconds, 1e-9), 1),
            **stage_metrics(start),
        },
    )
