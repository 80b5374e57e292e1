"""An OpenAI-compatible embeddings HTTP server over an ONNX export folder.

Routes:

- ``POST /v1/embeddings``  body ``{"input": str | list[str], "model": str?, "encoding_format": "float"|"base64"?}``,
  answered in OpenAI's shape, so OpenAI clients (and LangChain, LlamaIndex, ...) can point their
  ``base_url`` at it.
- ``GET /v1/models``       the one served model.
- ``GET /health``          liveness plus what is loaded.

Bad requests get HTTP 400 with OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``,
where ``param`` names the offending field.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from embed_assets.export.onnx_export import OnnxEmbedder

ENCODING_FORMATS = ("float", "base64")


class RequestError(ValueError):
    """A client error, answered with HTTP 400 naming ``param``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _error(message: str, param: str | None, status_code: int = 400) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}},
        status_code=status_code,
    )


def parse_embeddings_request(body: Any, *, max_batch: int, dim: int) -> tuple[list[str], str, str | None]:
    """Validate a ``/v1/embeddings`` body.

    Args:
        body: the decoded JSON body.
        max_batch: most texts accepted in one request.
        dim: the model's embedding width (a ``dimensions`` field must equal it).

    Returns:
        (texts, encoding_format, requested model name or None).

    Raises:
        RequestError: naming the offending field.
    """
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object", None)
    if "input" not in body:
        raise RequestError("'input' is required: a string or a list of strings", "input")
    raw = body["input"]
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list):
        if not raw:
            raise RequestError("'input' must not be an empty list", "input")
        bad = [i for i, item in enumerate(raw) if not isinstance(item, str)]
        if bad:
            # Token-id inputs (lists of ints) are valid for OpenAI but need OpenAI's tokenizer; refuse them.
            raise RequestError(
                f"'input' must be a string or a list of strings; items at index {bad[:5]} are not strings",
                "input",
            )
        texts = raw
    else:
        raise RequestError(
            f"'input' must be a string or a list of strings, got {type(raw).__name__}", "input"
        )
    if len(texts) > max_batch:
        raise RequestError(
            f"'input' has {len(texts)} items; at most {max_batch} are allowed per request", "input"
        )

    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", "model")
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ENCODING_FORMATS:
        raise RequestError(f"'encoding_format' must be one of {list(ENCODING_FORMATS)}", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != dim:
        raise RequestError(f"'dimensions' must be {dim} for this model (or omitted)", "dimensions")
    return texts, encoding_format, model


def _encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # What OpenAI's clients expect: little-endian float32 bytes, base64-encoded.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def create_app(
    onnx_dir: Path | str,
    *,
    model_name: str | None = None,
    max_batch: int = 256,
    int8: bool = False,
    batch_size: int = 32,
    max_concurrent: int = 1,
) -> Starlette:
    """Build the Starlette app; the ONNX model is loaded now, so a bad folder fails at start-up.

    Args:
        onnx_dir: folder written by ``embed_assets.export.export_onnx``.
        model_name: name reported in responses and ``/v1/models``; defaults to the folder name.
        max_batch: most texts accepted in one request (larger requests get HTTP 400).
        int8: serve ``model_int8.onnx`` instead of ``model.onnx``.
        batch_size: texts per onnxruntime call within a request.
        max_concurrent: encode calls allowed to run at once; onnxruntime already uses all cores
            for one call, so more mostly adds contention.
    """
    onnx_dir = Path(onnx_dir)
    embedder = OnnxEmbedder(onnx_dir, int8=int8)
    name = model_name or onnx_dir.resolve().name
    created = int(time.time())
    # Created lazily inside the event loop that serves requests.
    limiter: list[anyio.CapacityLimiter] = []

    async def embeddings(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error("request body is not valid JSON", None)
        try:
            texts, encoding_format, _ = parse_embeddings_request(body, max_batch=max_batch, dim=embedder.dim)
        except RequestError as exc:
            return _error(exc.message, exc.param)
        if not limiter:
            limiter.append(anyio.CapacityLimiter(max_concurrent))
        # Encoding is CPU/GPU-bound and synchronous: run it in a worker thread so the event loop
        # keeps answering /health and accepting connections meanwhile.
        vectors, n_tokens = await anyio.to_thread.run_sync(
            lambda: embedder.encode_with_usage(texts, batch_size=batch_size), limiter=limiter[0]
        )
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(vec, encoding_format)}
            for i, vec in enumerate(vectors)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            }
        )

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": name, "object": "model", "created": created, "owned_by": "embed_assets"}],
            }
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "model": name,
                "embedding_dim": embedder.dim,
                "max_seq_length": embedder.max_seq_length,
                "int8": embedder.int8,
                "providers": embedder.session.get_providers(),
            }
        )

    app = Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
    app.state.embedder = embedder
    app.state.model_name = name
    return app
