"""Stage 7: base vs fine-tuned on the held-out test split, BEIR metrics."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.assets.splitting import beir_dir
from embed_assets.defs.configs import RetrievalEvalConfig
from embed_assets.defs.resources import ArtifactStoreResource, BaseModelResource
from embed_assets.evaluation.metrics import comparison_table, markdown_table
from embed_assets.evaluation.retrieval import evaluate_model, load_beir
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
    base_model: BaseModelResource,
    store: ArtifactStoreResource,
):  # no return annotation: with check specs Dagster would read it as a multi-output tuple
    start = time.perf_counter()
    folder = beir_dir(store, qa_splits)
    _, queries, _ = load_beir(folder, "test")
    base = evaluate_model(base_model.load(), folder, "test", top_k=config.top_k)
    tuned = evaluate_model(load_model(finetuned_model["path"]), folder, "test", top_k=config.top_k)
    table = comparison_table(base, tuned)
    md = markdown_table(table)
    delta = (tuned["NDCG@10"] - base["NDCG@10"]) * 100
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
            "beir_dir": dg.MetadataValue.path(str(folder.resolve())),
            "finetuned_model_path": dg.MetadataValue.path(finetuned_model["path"]),
            "training_examples_version": finetuned_model.get("training_examples_version", ""),
            "wall_seconds": round(time.perf_counter() - start, 2),
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
