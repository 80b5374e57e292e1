"""Stage 8: ONNX export of a fine-tuned model that passed the no-regression gate."""

import time
from pathlib import Path

import dagster as dg
import polars as pl

from embed_assets.defs.configs import OnnxModelConfig
from embed_assets.defs.metadata import stage_metrics
from embed_assets.defs.resources import HOME_POOL, ArtifactStoreResource
from embed_assets.export import ParityReport, check_parity, export_onnx, int8_retrieval_drift, withdraw_int8
from embed_assets.lineage import code_version

PARITY_CHECK = dg.AssetCheckKey(dg.AssetKey("onnx_model"), "onnx_parity")
INT8_CHECK = dg.AssetCheckKey(dg.AssetKey("onnx_model"), "int8_retrieval_drift")


# A multi_asset with one asset only so that it may leave a declared check out (can_subset): an
# @asset's checks must all be reported on every run, and int8_retrieval_drift has nothing to check
# when no int8 model was written. The output is named "result", as an @asset's is.
@dg.multi_asset(
    pool=HOME_POOL,
    outs={
        "result": dg.AssetOut(
            key="onnx_model",
            group_name="export",
            code_version=code_version(
                __name__, "embed_assets.export.onnx_export", "embed_assets.export.int8_drift"
            ),
            kinds={"onnx"},
            description="The fine-tuned model as ONNX (pooling and normalisation inside the graph) with its "
            "tokenizer files, ready for `python -m embed_assets.serving`. Only runs when the no-regression "
            "gate passed. With quantize_int8, the int8 model is kept only if it ranks the test split like "
            "the fp32 one.",
        )
    },
    check_specs=[
        dg.AssetCheckSpec("onnx_parity", asset="onnx_model"),
        dg.AssetCheckSpec(
            "int8_retrieval_drift",
            asset="onnx_model",
            description="int8 vs fp32 ONNX nDCG@10 on the test split within max_int8_ndcg_drift; "
            "evaluated only when quantize_int8 is on (a failing int8 model is removed from the export)",
        ),
    ],
    can_subset=True,
)
def onnx_model(
    context: dg.AssetExecutionContext,
    config: OnnxModelConfig,
    finetuned_model: dict,
    document_chunks: pl.DataFrame,
    retrieval_eval: dict,
    store: ArtifactStoreResource,
):
    start = time.perf_counter()
    model_dir = finetuned_model["path"]
    out_dir = store.path("onnx", model_dir.rstrip("/").rsplit("/", 1)[-1])
    export = export_onnx(model_dir, out_dir, quantize_int8=config.quantize_int8)
    sample = document_chunks.sample(min(32, document_chunks.height), seed=0)["text"].to_list() + [
        "work_mem",
        "SQLSTATE 40P01",
    ]
    parity = check_parity(model_dir, out_dir, sample, min_cosine=config.min_parity_cosine)
    selected = context.selected_asset_check_keys
    checks = [_parity_check(parity, config)] if PARITY_CHECK in selected else []
    int8_kept = config.quantize_int8
    if config.quantize_int8 and INT8_CHECK in selected:
        # The same held-out queries and chunk corpus that retrieval_eval scored the model on.
        int8_check, int8_kept = _int8_drift_check(context, config, out_dir, retrieval_eval["beir_dir"])
        checks.append(int8_check)
    # Without quantize_int8 there is no int8 model to check: the check is not evaluated.
    yield dg.MaterializeResult(
        value={"path": str(out_dir.resolve()), "finetuned_model": model_dir, "int8": int8_kept},
        metadata={
            **_metadata(out_dir, parity, int8_kept),
            **stage_metrics(start),
            "export": dg.MetadataValue.json({k: str(v) for k, v in vars(export).items()}),
        },
        check_results=checks,
    )


def _parity_check(parity: ParityReport, config: OnnxModelConfig) -> dg.AssetCheckResult:
    """onnxruntime's embeddings against PyTorch's, by cosine."""
    return dg.AssetCheckResult(
        check_name="onnx_parity",
        passed=parity.passed,
        metadata={
            "n": parity.n,
            "min_cosine": round(parity.min_cosine, 6),
            "mean_cosine": round(parity.mean_cosine, 6),
        },
        description=f"onnxruntime vs PyTorch cosine ≥ {config.min_parity_cosine}",
    )


def _int8_drift_check(
    context: dg.AssetExecutionContext, config: OnnxModelConfig, out_dir: Path, beir_dir: str
) -> tuple[dg.AssetCheckResult, bool]:
    """The int8 vs fp32 nDCG@10 check (an int8 model that drifted too far is withdrawn), and int8 kept."""
    drift = int8_retrieval_drift(out_dir, beir_dir, max_drift=config.max_int8_ndcg_drift)
    context.log.info(
        "int8 nDCG@10 %.4f vs fp32 %.4f (drift %.4f, max %.4f)",
        drift.int8_ndcg10,
        drift.fp32_ndcg10,
        drift.drift,
        drift.max_drift,
    )
    int8_kept = True
    if not drift.passed:
        withdraw_int8(
            out_dir,
            f"int8 nDCG@10 {drift.int8_ndcg10:.4f} vs fp32 {drift.fp32_ndcg10:.4f} on the test split: "
            f"drift {drift.drift:.4f} > {drift.max_drift}",
        )
        int8_kept = False
    check = dg.AssetCheckResult(
        check_name="int8_retrieval_drift",
        passed=drift.passed,
        metadata={**drift.to_dict(), "int8_kept": int8_kept},
        description=f"|int8 − fp32| nDCG@10 on the test split ≤ {config.max_int8_ndcg_drift}",
    )
    return check, int8_kept


def _metadata(out_dir: Path, parity: ParityReport, int8_kept: bool) -> dict:
    """Where the export is, how close it is to PyTorch, and how to serve it."""
    return {
        "path": dg.MetadataValue.path(str(out_dir.resolve())),
        "parity_min_cosine": round(parity.min_cosine, 6),
        "int8": int8_kept,
        "serve_with": f"python -m embed_assets.serving --model-dir {out_dir.resolve()}"
        + (" [--int8]" if int8_kept else ""),
    }
