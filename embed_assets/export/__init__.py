"""ONNX export of a sentence-transformers bi-encoder (needs torch), parity and int8 retrieval checks.

Running an export (``OnnxEmbedder``, ``read_descriptor``) lives in ``embed_assets.serving.runtime``,
which imports no torch, so the server does not need it.
"""

from embed_assets.export.int8_drift import Int8Drift, int8_retrieval_drift
from embed_assets.export.onnx_export import (
    OnnxExport,
    ParityReport,
    check_parity,
    export_onnx,
    quantize_onnx_int8,
    withdraw_int8,
)

__all__ = [
    "Int8Drift",
    "OnnxExport",
    "ParityReport",
    "check_parity",
    "export_onnx",
    "int8_retrieval_drift",
    "quantize_onnx_int8",
    "withdraw_int8",
]
