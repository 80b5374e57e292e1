"""Stage 7: base vs fine-tuned on the held-out test split, BEIR metrics."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.assets.splitting import beir_dir
from embed_assets.defs.configs import RetrievalEvalConfig
from embed_assets.defs.metadata import stage_metrics
from embed_assets.defs.resources import ArtifactStoreResource, BaseModelResource
from embed_assets.evaluation.metrics import (
    comparison_table,
    ir_metrics,
    markdown_table,
    paired_bootstrap,
    per_query_ndcg,
)
from embed_assets.evaluation.retrieval import load_beir, retrieve
from embed_assets.mining.index import ChunkIndex, read_vectors
from embed_assets.models import load_model


@dg.asset(
    group_name="evaluation",
    kinds={"beir"},
    description="nDCG@1/5/10, Recall@10/100, MAP@10 and MRR@10 of the base and the fine-tuned model on the "
    "held-out test split (whole chunk corpus), with absolute and relative deltas.",
    check_specs=[dg.AssetCheckSpec("no_regression_vs_base", asset="retrieval_eval", blocking=True)],
)
def retrieval_eval(
    context: dg.AssetExecutionContext,
    config: RetrievalEvalConfig,
    finetuned_model: dict,
    qa_splits: pl.DataFrame,
    base_chunk_index: dict,
    base_model: BaseModelResource,
    store: ArtifactStoreResource,
):  # no return annotation: with check specs Dagster would read it as a multi-output tuple
    start = time.perf_counter()
    folder = beir_dir(store, qa_splits)
    corpus, queries, qrels = load_beir(folder, "test")
    # The base model's corpus embeddings are already in the LanceDB index: reuse them
    # (same model, same chunk texts) instead of encoding the corpus a second time.
    base_vectors = None
    if base_chunk_index.get("model") == base_model.path():
        base_vectors = read_vectors(
            ChunkIndex(base_chunk_index["uri"], base_chunk_index["table"]), list(corpus)
        )
    base_run = retrieve(base_model.load(), corpus, queries, top_k=config.top_k, corpus_vectors=base_vectors)
    base = ir_metrics(qrels, base_run)
    tuned_run = retrieve(load_model(finetuned_model["path"]), corpus, queries, top_k=config.top_k)
    tuned = ir_metrics(qrels, tuned_run)
    table = comparison_table(base, tuned)
    md = markdown_table(table)
    delta = (tuned["NDCG@10"] - base["NDCG@10"]) * 100
    # Is the gain more than query sampling noise? Paired bootstrap over the test queries.
    significance = paired_bootstrap(per_query_ndcg(qrels, tuned_run), per_query_ndcg(qrels, base_run))
    passed = delta >= -config.tolerance_points
    context.log.info(
        "test nDCG@10: base %.4f, fine-tuned %.4f (%+.2f points)", base["NDCG@10"], tuned["NDCG@10"], delta
    )
    return dg.MaterializeResult(
        value={
            "base": base,
            "fine_tuned": tuned,
            "table": table.to_dicts(),
            "markdown": md,
            "ndcg10_significance": significance,
            "test_queries": len(queries),
            "beir_dir": str(folder.resolve()),
            "base_model": finetuned_model["base_model"],
            "finetuned_model": finetuned_model["path"],
        },
        metadata={
            "metrics": dg.MetadataValue.md(md),
            "test_queries": len(queries),
            "ndcg10_base": round(base["NDCG@10"], 4),
            "ndcg10_fine_tuned": round(tuned["NDCG@10"], 4),
            "ndcg10_delta_points": round(delta, 2),
            "ndcg10_delta_ci95_points": f"[{significance['ci95_low']:+.2f}, {significance['ci95_high']:+.2f}]",
            "ndcg10_delta_p_value": significance["p_two_sided"],
            "beir_dir": dg.MetadataValue.path(str(folder.resolve())),
            "finetuned_model_path": dg.MetadataValue.path(finetuned_model["path"]),
            "training_examples_version": finetuned_model.get("training_examples_version", ""),
            **stage_metrics(start),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_regression_vs_base",
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "ndcg10_delta_points": round(delta, 2),
                    "tolerance_points": config.tolerance_points,
                },
                description="fine-tuned nDCG@10 must not fall below base; a regressed model is never exported",
            )
        ],
    )
