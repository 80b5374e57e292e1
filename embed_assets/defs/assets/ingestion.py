"""Stage 1: documents in, chunks out."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.configs import DocumentChunksConfig, SourceDocumentsConfig
from embed_assets.defs.metadata import counts_table, histogram, preview, stage_metrics
from embed_assets.defs.provenance import previous_materialization, recorded_value
from embed_assets.defs.resources import HOME_POOL, ArtifactStoreResource, BaseModelResource
from embed_assets.ingest.chunking import chunk_documents
from embed_assets.ingest.documents import read_corpus, read_jsonl_documents, read_lancedb_chunks
from embed_assets.lineage import code_version, data_version


@dg.asset(
    pool=HOME_POOL,
    group_name="ingestion",
    kinds={"polars"},
    code_version=code_version(__name__, "embed_assets.ingest.documents"),
    description="Every .txt/.md/.html file under the corpus folder (HTML converted to text), every line of a "
    "JSON Lines corpus, or every row of a production LanceDB chunk table. "
    "Document ids are content hashes; binary, non-UTF-8, empty and duplicate files are skipped and counted.",
)
def source_documents(
    context: dg.AssetExecutionContext,
    config: SourceDocumentsConfig,
    store: ArtifactStoreResource,  # unused here: every asset requires the home's claim (resources.py)
) -> dg.MaterializeResult[pl.DataFrame]:
    start = time.perf_counter()
    if config.lancedb_uri:
        source = f"{config.lancedb_uri}::{config.lancedb_table}"
        result = read_lancedb_chunks(
            config.lancedb_uri,
            config.lancedb_table,
            text_column=config.text_column,
            title_column=config.title_column,
            id_column=config.id_column,
        )
    elif config.corpus_jsonl:
        source = config.corpus_jsonl
        result = read_jsonl_documents(config.corpus_jsonl)
    else:
        source = config.corpus_dir
        result = read_corpus(config.corpus_dir)
    docs = result.documents
    context.log.info("read %d documents from %s (%d files/rows)", docs.height, source, result.files_seen)
    return dg.MaterializeResult(
        value=docs,
        data_version=dg.DataVersion(data_version(docs, config)),
        metadata={
            "source": source,
            "files_seen": result.files_seen,
            "documents": docs.height,
            "files_skipped": sum(result.skipped.values()),
            "skipped_by_reason": counts_table(dict(result.skipped)),
            "skipped_files": dg.MetadataValue.md(
                "\n".join(f"- `{p}`: {r}" for p, r in result.skipped_files[:50]) or "_none_"
            ),
            "total_chars": int(docs["n_chars"].sum()),
            "approx_tokens": int(docs["n_chars"].sum() // 4),
            "largest_document_chars": int(docs["n_chars"].max()),
            "preview": preview(docs.select("doc_id", "doc_path", "title", "n_chars")),
            **stage_metrics(start),
        },
    )


@dg.asset(
    pool=HOME_POOL,
    group_name="ingestion",
    kinds={"polars"},
    code_version=code_version(__name__, "embed_assets.ingest.chunking"),
    description="Token-aware chunks with overlap, measured in the base model's tokenizer. Chunk ids are content hashes.",
)
def document_chunks(
    context: dg.AssetExecutionContext,
    config: DocumentChunksConfig,
    source_documents: pl.DataFrame,
    base_model: BaseModelResource,
    store: ArtifactStoreResource,  # unused here: every asset requires the home's claim (resources.py)
) -> dg.MaterializeResult[pl.DataFrame]:
    start = time.perf_counter()
    chunks = chunk_documents(source_documents, base_model.load().tokenizer, config.to_core())
    per_doc = chunks.group_by("doc_path").len().sort("len", descending=True)
    # What changed since the previous materialization: what a sensor-triggered run has to pay for.
    previous = recorded_value(previous_materialization(context, "document_chunks"))
    changes = {}
    if previous is not None:
        before, now = set(previous["chunk_id"]), set(chunks["chunk_id"])
        changes = {
            "chunks_added": len(now - before),
            "chunks_deleted": len(before - now),
            "chunks_unchanged": len(now & before),
        }
    return dg.MaterializeResult(
        value=chunks,
        data_version=dg.DataVersion(
            data_version(chunks, {"chunking": config.model_dump(), "tokenizer": base_model.path()})
        ),
        metadata={
            "chunks": chunks.height,
            **changes,
            "documents": source_documents.height,
            "tokens_total": int(chunks["n_tokens"].sum()),
            "tokens_per_chunk": histogram(chunks["n_tokens"].to_list(), label="tokens"),
            "most_chunked_documents": preview(per_doc, n=5),
            "preview": preview(chunks.select("chunk_id", "doc_path", "chunk_index", "n_tokens", "text")),
            **stage_metrics(start),
        },
    )
