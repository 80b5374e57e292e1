"""OpenAI-compatible embeddings HTTP server over an ONNX export (starlette + uvicorn), and the
onnxruntime embedder it runs. Nothing here imports torch or sentence-transformers."""

from embed_assets.serving.runtime import (
    DESCRIPTOR_FILE,
    INT8_MODEL_FILE,
    MODEL_FILE,
    OnnxEmbedder,
    TextTokenizer,
    read_descriptor,
)
from embed_assets.serving.server import ApiError, RequestError, create_app, parse_embeddings_request

__all__ = [
    "DESCRIPTOR_FILE",
    "INT8_MODEL_FILE",
    "MODEL_FILE",
    "ApiError",
    "OnnxEmbedder",
    "RequestError",
    "TextTokenizer",
    "create_app",
    "parse_embeddings_request",
    "read_descriptor",
]
