"""OpenAI-compatible embeddings HTTP server over an ONNX export (starlette + uvicorn)."""

from embed_assets.serving.server import RequestError, create_app, parse_embeddings_request

__all__ = ["RequestError", "create_app", "parse_embeddings_request"]
