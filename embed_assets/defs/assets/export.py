"""Stage 8: ONNX export of a fine-tuned model that passed the no-regression gate."""

import time

import dagster as dg
import polars as pl

from embed_assets.defs.configs import OnnxModelConfig
from embed_assets.defs.metadata import stage_metrics
from embed_assets.defs.resources import ArtifactStoreResource
from embed_assets.export.onnx_export import check_parity, export_onnx


@dg.asset(
    group_name="export",
    kinds={"onnx"},
    description="The fine-tuned model as ONNX (pooling and normalisation inside the graph) with its tokenizer "
    "files, ready for `python -m embed_assets.serving`. Only runs when the no-regression gate passed.",
    deps=["retrieval_eval"],
    check_specs=[dg.AssetCheckSpec("onnx_parity", asset="onnx_model")],
)
def onnx_model(
    context: dg.AssetExecutionContext,
    config: OnnxModelConfig,
    finetuned_model: dict,
    document_chunks: pl.DataFrame,
    store: ArtifactStoreResource,
):  # no return annotation: with check specs Dagster would read it as a multi-output tuple
    start = time.perf_counter()
    model_dir = finetuned_model["path"]
    out_dir = store.path("onnx", model_dir.rstrip("/").rsplit("/", 1)[-1])
    export = export_onnx(model_dir, out_dir, quantize_int8=config.quantize_int8)
    sample = document_chunks.sample(min(32, document_chunks.height), seed=0)["text"].to_list() + [
        "work_mem",
        "SQLSTATE 40P01",
    ]
    parity = check_parity(model_dir, out_dir, sample, min_cosine=config.min_parity_cosine)
    return dg.MaterializeResult(
        value={"path": str(out_dir.resolve()), "finetuned_model": model_dir},
        metadata={
            "path": dg.MetadataValue.path(str(out_dir.resolve())),
            "parity_min_cosine": round(parity.min_cosine, 6),
            "int8": config.quantize_int8,
            "serve_with": f"python -m embed_assets.serving --model-dir {out_dir.resolve()}",
            **stage_metrics(start),
            "export": dg.MetadataValue.json({k: str(v) for k, v in vars(export).items()}),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="onnx_parity",
                passed=parity.passed,
                metadata={
                    "n": parity.n,
                    "min_cosine": round(parity.min_cosine, 6),
                    "mean_cosine": round(parity.mean_cosine, 6),
                },
                description=f"onnxruntime vs PyTorch cosine ≥ {config.min_parity_cosine}",
            )
        ],
    )
