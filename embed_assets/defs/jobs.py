"""Jobs over the asset graph."""

import dagster as dg

pipeline_job = dg.define_asset_job(
    "embed_assets_pipeline",
    selection=dg.AssetSelection.all(),
    description="Documents in; chunks, questions, filters, negatives, fine-tuned model, evaluation and ONNX out.",
)
