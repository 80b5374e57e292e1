"""Stage 7: base vs fine-tuned on the held-out test split (and on labelled queries), BEIR metrics."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.assets.splitting import beir_dir
from embed_assets.defs.configs import RetrievalEvalConfig
from embed_assets.defs.metadata import counts_table, stage_metrics
from embed_assets.defs.resources import ArtifactStoreResource, BaseModelResource
from embed_assets.evaluation.labelled import document_run, load_labelled_queries
from embed_assets.evaluation.metrics import compare_runs, delta_points
from embed_assets.evaluation.retrieval import load_beir, retrieve
from embed_assets.mining.index import ChunkIndex, read_vectors
from embed_assets.models import encode, load_model


def _summary_metadata(prefix: str, comparison: dict) -> dict:
    sig = comparison["ndcg10_significance"]
    return {
        f"{prefix}ndcg10_base": round(comparison["base"]["NDCG@10"], 4),
        f"{prefix}ndcg10_fine_tuned": round(comparison["fine_tuned"]["NDCG@10"], 4),
        f"{prefix}ndcg10_delta_points": round(delta_points(comparison), 2),
        f"{prefix}ndcg10_delta_ci95_points": f"[{sig['ci95_low']:+.2f}, {sig['ci95_high']:+.2f}]",
        f"{prefix}ndcg10_delta_p_value": sig["p_two_sided"],
    }


@dg.asset(
    group_name="evaluation",
    kinds={"beir"},
    description="nDCG@1/5/10, Recall@10/100, MAP@10 and MRR@10 of the base and the fine-tuned model on the "
    "held-out test split (whole chunk corpus), with absolute and relative deltas; and on queries written by "
    "people when labelled_queries_dir is set (documents scored by their best chunk).",
    check_specs=[dg.AssetCheckSpec("no_regression_vs_base", asset="retrieval_eval", blocking=True)],
)
def retrieval_eval(
    context: dg.AssetExecutionContext,
    config: RetrievalEvalConfig,
    finetuned_model: dict,
    qa_splits: pl.DataFrame,
    source_documents: pl.DataFrame,
    document_chunks: pl.DataFrame,
    base_chunk_index: dict,
    base_model: BaseModelResource,
    store: ArtifactStoreResource,
):  # no return annotation: with check specs Dagster would read it as a multi-output tuple
    start = time.perf_counter()
    folder = beir_dir(store, qa_splits)
    corpus, queries, qrels = load_beir(folder, "test")
    # Read the labelled set first: a naming mistake should fail before minutes of encoding.
    labelled = None
    if config.labelled_queries_dir:
        other_names = {}
        if "aliases" in source_documents.columns:  # documents read before aliases were kept have none
            dups = source_documents.select("doc_path", "aliases").explode("aliases").drop_nulls()
            other_names = dict(zip(dups["aliases"], dups["doc_path"], strict=True))
        labelled = load_labelled_queries(
            config.labelled_queries_dir,
            config.labelled_queries_split,
            source_documents["doc_path"],
            other_names=other_names,
        )
    # Each model's corpus embeddings are computed once and serve both query sets. The base
    # model's are already in the LanceDB index (same model, same chunk texts): reuse them.
    base, tuned = base_model.load(), load_model(finetuned_model["path"])
    if base_chunk_index.get("model") == base_model.path():
        base_vectors = read_vectors(
            ChunkIndex(base_chunk_index["uri"], base_chunk_index["table"]), list(corpus)
        )
    else:
        base_vectors = encode(base, list(corpus.values()))
    tuned_vectors = encode(tuned, list(corpus.values()))

    def run(model, vectors, qs, top_k):
        return retrieve(model, corpus, qs, top_k=top_k, corpus_vectors=vectors)

    synthetic = compare_runs(
        qrels,
        run(base, base_vectors, queries, config.top_k),
        run(tuned, tuned_vectors, queries, config.top_k),
    )
    evaluations = {"synthetic test split": synthetic}
    context.log.info(
        "test nDCG@10: base %.4f, fine-tuned %.4f (%+.2f points)",
        synthetic["base"]["NDCG@10"],
        synthetic["fine_tuned"]["NDCG@10"],
        delta_points(synthetic),
    )
    value = {
        **synthetic,
        "test_queries": len(queries),
        "beir_dir": str(folder.resolve()),
        "base_model": finetuned_model["base_model"],
        "finetuned_model": finetuned_model["path"],
    }
    metadata = {
        "metrics": dg.MetadataValue.md(synthetic["markdown"]),
        "test_queries": len(queries),
        **_summary_metadata("", synthetic),
    }
    if labelled is not None:
        chunk_document = dict(zip(document_chunks["chunk_id"], document_chunks["doc_path"], strict=True))
        # Several chunks of one document collapse into one hit: rank chunks 10x deeper than
        # the documents kept, so that top_k distinct documents are still there.
        depth = min(len(corpus), 10 * config.top_k)
        real = compare_runs(
            labelled.qrels,
            document_run(run(base, base_vectors, labelled.queries, depth), chunk_document, config.top_k),
            document_run(run(tuned, tuned_vectors, labelled.queries, depth), chunk_document, config.top_k),
        )
        evaluations["labelled queries"] = real
        context.log.info(
            "labelled nDCG@10 (%d queries): base %.4f, fine-tuned %.4f (%+.2f points)",
            len(labelled.queries),
            real["base"]["NDCG@10"],
            real["fine_tuned"]["NDCG@10"],
            delta_points(real),
        )
        value["labelled"] = {
            **real,
            "queries": len(labelled.queries),
            "source": labelled.source,
            "fingerprint": labelled.fingerprint,
            "skipped": labelled.skipped,
        }
        metadata.update(
            {
                "labelled_metrics": dg.MetadataValue.md(real["markdown"]),
                "labelled_queries": len(labelled.queries),
                "labelled_source": dg.MetadataValue.path(labelled.source),
                "labelled_fingerprint": labelled.fingerprint,
                "labelled_skipped": counts_table(labelled.skipped),
                "labelled_unknown_documents": ", ".join(labelled.unknown_documents) or "none",
                **_summary_metadata("labelled_", real),
            }
        )
    # The gate: every gate metric of every evaluation within tolerance of the base model.
    deltas = {
        (name, metric): delta_points(ev, metric)
        for name, ev in evaluations.items()
        for metric in config.gate_metrics
    }
    regressions = {key: d for key, d in deltas.items() if d < -config.tolerance_points}
    failed = list(dict.fromkeys(name for name, _ in regressions))
    metadata.update(
        {
            "beir_dir": dg.MetadataValue.path(str(folder.resolve())),
            "finetuned_model_path": dg.MetadataValue.path(finetuned_model["path"]),
            "training_examples_version": finetuned_model.get("training_examples_version", ""),
            **stage_metrics(start),
        }
    )
    return dg.MaterializeResult(
        value=value,
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="no_regression_vs_base",
                passed=not failed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    **{
                        f"{metric.lower().replace('@', '')}_delta_points_{name.replace(' ', '_')}": round(
                            d, 2
                        )
                        for (name, metric), d in deltas.items()
                    },
                    "gate_metrics": ", ".join(config.gate_metrics),
                    "tolerance_points": config.tolerance_points,
                    "regressed_on": ", ".join(failed) or "none",
                    "regressions": "; ".join(f"{n} {m} {d:+.2f}" for (n, m), d in regressions.items())
                    or "none",
                },
                description="fine-tuned must not fall below base on the gate metrics (default nDCG@10), on the "
                "synthetic test split nor on the labelled queries when given; a regressed model is never exported",
            )
        ],
    )
