"""ONNX export of a sentence-transformers bi-encoder, an onnxruntime embedder and parity checks."""

from embed_assets.export.onnx_export import (
    DESCRIPTOR_FILE,
    INT8_MODEL_FILE,
    MODEL_FILE,
    OnnxEmbedder,
    OnnxExport,
    ParityReport,
    check_parity,
    export_onnx,
    quantize_onnx_int8,
    read_descriptor,
)

__all__ = [
    "DESCRIPTOR_FILE",
    "INT8_MODEL_FILE",
    "MODEL_FILE",
    "OnnxEmbedder",
    "OnnxExport",
    "ParityReport",
    "check_parity",
    "export_onnx",
    "quantize_onnx_int8",
    "read_descriptor",
]
