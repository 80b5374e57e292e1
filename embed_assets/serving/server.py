"""An OpenAI-compatible embeddings HTTP server over an ONNX export folder (starlette + uvicorn).

Routes:

- ``POST /v1/embeddings``  OpenAI's request and response shape, so OpenAI clients (the ``openai``
  package, LangChain's ``OpenAIEmbeddings``, LlamaIndex, ...) can point their ``base_url`` here.
- ``GET /v1/models``       the one served model.
- ``GET /health``          liveness, what is loaded, the limits, and the batcher's counters.

Request body of ``/v1/embeddings``:

- ``input`` (required): a string, a list of strings, a list of token ids (one input) or a list of
  lists of token ids. Token ids are OpenAI ``cl100k_base`` ids, what tiktoken gives the ``openai``
  client and LangChain; they are decoded to text (see ``token_ids.py``). ``""`` and empty lists are
  refused, as OpenAI does.
- ``model``: optional; when given it must be the served model's name (else 404 ``model_not_found``).
- ``encoding_format``: ``"float"`` (default) or ``"base64"`` (little-endian float32).
- ``dimensions``: optional; must equal the model's width.
- ``input_type``: optional, ``"query"`` or ``"passage"`` (as NVIDIA NIM): the model's matching
  sentence-transformers prompt is put before each text (``passage`` falls back to a ``document``
  prompt). A model without prompts embeds the text as is. Without ``input_type`` the model's default
  prompt applies, if it has one, as in ``SentenceTransformer.encode``.
- ``truncate``: ``"NONE"`` (default) or ``"END"``. An input longer than the model's
  ``max_seq_length`` tokens (special tokens and prompt included) is refused with 400 naming it,
  unless the client sends ``"truncate": "END"``: then its end is cut, as sentence-transformers does.
- ``user``: accepted and ignored.

Limits: the body may hold at most ``max_body_bytes`` (413 ``request_too_large``; a ``Content-Length``
above it is refused before the body is read, a chunked body is counted as it arrives) and at most
``max_inputs`` inputs (400). When the batcher's queue is full the answer is 503 ``server_overloaded``
with ``Retry-After``.

Every error, including unknown routes (404), wrong methods (405) and unexpected failures (500), is
OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from embed_assets.serving.batcher import MicroBatcher, Overloaded
from embed_assets.serving.runtime import TRUNCATE_MODES, InputTooLongError, OnnxEmbedder
from embed_assets.serving.token_ids import TokenIdDecoder, TokenIdError

ENCODING_FORMATS = ("float", "base64")
INPUT_TYPES = ("query", "passage")
# sentence-transformers prompt names tried for each input_type, first match wins.
PROMPT_NAMES = {"query": ("query",), "passage": ("passage", "document")}
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_INPUTS = 2048  # OpenAI's limit per request
# Requests with more characters than this are tokenised on a worker thread, not on the event loop.
_INLINE_TOKENIZE_CHARS = 8192


class ApiError(Exception):
    """An error answered in OpenAI's shape.

    Args:
        status: HTTP status.
        message: what went wrong, for a person.
        param: the request field at fault, if any.
        code: a machine-readable code (``model_not_found``, ``request_too_large``, ...), if any.
        headers: extra response headers (``Retry-After``, ``Allow``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


class RequestError(ApiError):
    """A client error in the request body, answered with HTTP 400 naming ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(400, message, param=param, code=code)


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error body: ``invalid_request_error`` for 4xx, ``server_error`` for 5xx."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A validated ``/v1/embeddings`` body.

    Attributes:
        inputs: each a string or a list of token ids.
        encoding_format: ``"float"`` or ``"base64"``.
        model: the requested model name, or None.
        input_type: ``"query"``, ``"passage"`` or None.
        truncate: ``"NONE"`` or ``"END"``.
    """

    inputs: list[str | list[int]]
    encoding_format: str
    model: str | None
    input_type: str | None
    truncate: str


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _kind(item: Any) -> str:
    if isinstance(item, str):
        return "str"
    if _is_int(item):
        return "int"
    return "list" if isinstance(item, list) else "other"


def _check_text(text: str, where: str) -> None:
    if text == "":
        raise RequestError(
            f"{where} is an empty string; every input must have at least one character", "input"
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(
                f"{where} is not valid Unicode: it holds a lone surrogate "
                f"(U+{ord(text[exc.start]):04X}) at character {exc.start}",
                "input",
            ) from None


def _check_ids(ids: list, where: str) -> list[int]:
    if not ids:
        raise RequestError(f"{where} is an empty list of token ids", "input")
    if not all(_is_int(t) for t in ids):
        raise RequestError(f"{where} must hold only integer token ids", "input")
    return ids


def _parse_input_list(raw: list) -> list[str | list[int]]:
    """The inputs of a list ``input``: strings, one input's token ids, or one list of ids per input."""
    if not raw:
        raise RequestError("'input' must not be an empty list", "input")
    # Every item must be of item 0's kind: a mix is ambiguous (one token-id input or several?).
    kinds = [_kind(item) for item in raw]
    bad = next((i for i, k in enumerate(kinds) if k != kinds[0] or k == "other"), None)
    if bad is not None:
        raise RequestError(
            "'input' must be a string, a list of strings, a list of integer token ids or a list of "
            "lists of token ids; "
            + (
                f"item {bad} is a {type(raw[bad]).__name__}"
                if kinds[bad] == "other"
                else f"item {bad} ({type(raw[bad]).__name__}) does not match item 0 ({type(raw[0]).__name__})"
            ),
            "input",
        )
    if kinds[0] == "str":
        for i, item in enumerate(raw):
            _check_text(item, f"input[{i}]")
        return list(raw)
    if kinds[0] == "int":
        return [raw]  # one input given as token ids
    return [_check_ids(item, f"input[{i}]") for i, item in enumerate(raw)]


def _parse_inputs(body: dict, max_inputs: int) -> list[str | list[int]]:
    """The validated ``input`` field of a body, as a list of inputs (each text or token ids)."""
    if "input" not in body:
        raise RequestError(
            "'input' is required: a string, a list of strings, or token ids (a list of integers or a "
            "list of such lists)",
            "input",
        )
    raw = body["input"]
    inputs: list[str | list[int]]
    if isinstance(raw, str):
        _check_text(raw, "'input'")
        inputs = [raw]
    elif isinstance(raw, list):
        inputs = _parse_input_list(raw)
    else:
        raise RequestError(
            f"'input' must be a string, a list of strings or token ids, got {type(raw).__name__}", "input"
        )
    if len(inputs) > max_inputs:
        raise RequestError(
            f"'input' has {len(inputs)} items; at most {max_inputs} are allowed per request", "input"
        )
    return inputs


def _parse_model(body: dict, model_name: str | None) -> str | None:
    """The requested ``model``, refused with 404 when it is not the served one."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", "model")
    if model is not None and model_name is not None and model != model_name:
        raise ApiError(
            404,
            f"The model '{model}' does not exist; this server serves '{model_name}' (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    return model


def parse_embeddings_request(
    body: Any, *, max_inputs: int, dim: int, model_name: str | None = None
) -> EmbeddingsRequest:
    """Validate a ``/v1/embeddings`` body.

    Args:
        body: the decoded JSON body.
        max_inputs: most inputs accepted in one request.
        dim: the model's embedding width (a ``dimensions`` field must equal it).
        model_name: the served model; a different ``model`` is answered 404. None accepts any.

    Raises:
        RequestError: naming the offending field (HTTP 400).
        ApiError: 404 ``model_not_found``.
    """
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object", None)
    # Fields are checked in this order so the error a client sees names the first bad field.
    inputs = _parse_inputs(body, max_inputs)
    model = _parse_model(body, model_name)
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ENCODING_FORMATS:
        raise RequestError(f"'encoding_format' must be one of {list(ENCODING_FORMATS)}", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or dimensions != dim):
        raise RequestError(f"'dimensions' must be {dim} for this model (or omitted)", "dimensions")
    input_type = body.get("input_type")
    if input_type is not None and input_type not in INPUT_TYPES:
        raise RequestError(f"'input_type' must be one of {list(INPUT_TYPES)} (or omitted)", "input_type")
    truncate = body.get("truncate")
    if truncate is None:
        truncate = "NONE"
    if truncate not in TRUNCATE_MODES:
        raise RequestError(
            f"'truncate' must be one of {list(TRUNCATE_MODES)}: NONE refuses over-long inputs, END cuts "
            "their end",
            "truncate",
        )
    return EmbeddingsRequest(inputs, encoding_format, model, input_type, truncate)


def resolve_prompt(prompts: dict[str, str], default_prompt_name: str | None, input_type: str | None) -> str:
    """The text put before each input: the model's prompt for ``input_type``, or its default prompt.

    Args:
        prompts: the model's sentence-transformers prompts (name → text); may be empty.
        default_prompt_name: the prompt sentence-transformers applies when none is named, or None.
        input_type: ``"query"``, ``"passage"`` or None.
    """
    if input_type is None:
        return prompts.get(default_prompt_name, "") if default_prompt_name else ""
    for name in PROMPT_NAMES[input_type]:
        if name in prompts:
            return prompts[name]
    return ""


def _encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # What OpenAI's clients expect: little-endian float32 bytes, base64-encoded.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes.

    A ``Content-Length`` above the limit is refused before any of the body is read; a body without
    one (chunked) is counted as it streams in and refused when the count passes the limit.
    """
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "Content-Length is not an integer") from None
        if declared > limit:
            raise ApiError(
                413,
                f"request body is {declared} bytes; this server accepts at most {limit}",
                code="request_too_large",
            )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413,
                f"request body exceeds {limit} bytes, the most this server accepts",
                code="request_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_json(raw: bytes) -> Any:
    """The parsed request body, or a 400 saying why it is not JSON."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise RequestError("request body nests JSON too deeply", None) from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError (bytes that are not UTF-8)
        raise RequestError("request body is not valid JSON", None) from None


def _too_long_error(exc: InputTooLongError) -> RequestError:
    """The 400 ``context_length_exceeded`` for an input over the model's length, naming the fix."""
    return RequestError(
        f"input[{exc.index}] has {'more than ' if exc.at_least else ''}{exc.n_tokens} tokens (special "
        "tokens and prompt included); this "
        f'model reads at most {exc.max_tokens}. Shorten it, or send "truncate": "END" to have '
        "its end cut",
        "input",
        code="context_length_exceeded",
    )


def _embeddings_payload(
    model_name: str, req: EmbeddingsRequest, ids: list[list[int]], vectors: Any
) -> dict[str, Any]:
    """OpenAI's ``/v1/embeddings`` response body; usage counts the tokens the model read."""
    n_tokens = sum(len(row) for row in ids)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_vector(vec, req.encoding_format)}
        for i, vec in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }


@dataclass(frozen=True)
class _ServerState:
    """What the route handlers share, held explicitly rather than captured by closures.

    Attributes:
        embedder: the backend (``OnnxEmbedder`` or one passed to ``create_app``).
        batcher: batches requests' inputs into model calls.
        decoder: turns OpenAI token ids back into text.
        name: the served model's name.
        created: when the app was built (Unix seconds), reported by ``/v1/models``.
        max_inputs: most inputs in one request.
        max_body_bytes: largest request body.
        max_queued_inputs: inputs allowed to wait for the model (reported by ``/health``).
    """

    embedder: Any
    batcher: MicroBatcher
    decoder: TokenIdDecoder
    name: str
    created: int
    max_inputs: int
    max_body_bytes: int
    max_queued_inputs: int

    async def embeddings(self, request: Request) -> JSONResponse:
        """``POST /v1/embeddings``."""
        raw = await read_body(request, self.max_body_bytes)
        body = _decode_json(raw)
        req = parse_embeddings_request(
            body, max_inputs=self.max_inputs, dim=self.embedder.dim, model_name=self.name
        )
        ids = await _tokenize(self, req)
        vectors = await _embed(self.batcher, ids)
        return JSONResponse(_embeddings_payload(self.name, req, ids, vectors))

    async def models(self, request: Request) -> JSONResponse:
        """``GET /v1/models``: the one served model."""
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": self.name, "object": "model", "created": self.created, "owned_by": "embed_assets"}
                ],
            }
        )

    async def health(self, request: Request) -> JSONResponse:
        """``GET /health``: what is loaded, the limits and the batcher's counters."""
        return JSONResponse(_health_payload(self))

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Stop the batcher's worker when the server shuts down."""
        yield
        self.batcher.close()


def _prepare_ids(state: _ServerState, req: EmbeddingsRequest) -> list[list[int]]:
    """Token ids of every input: ids decoded to text, prompt added, tokenised, length-checked."""
    texts = []
    for i, item in enumerate(req.inputs):
        if isinstance(item, str):
            texts.append(item)
            continue
        try:
            texts.append(state.decoder.decode(item))
        except TokenIdError as exc:
            raise TokenIdError(f"input[{i}]: {exc}") from None
    embedder = state.embedder
    prompt = resolve_prompt(embedder.prompts, embedder.default_prompt_name, req.input_type)
    if prompt:
        texts = [prompt + text for text in texts]
    return embedder.tokenizer.encode(texts, truncate=req.truncate)


async def _tokenize(state: _ServerState, req: EmbeddingsRequest) -> list[list[int]]:
    """``_prepare_ids`` off or on the event loop by request size; its failures become 400s."""
    try:
        heavy = any(not isinstance(x, str) for x in req.inputs) or (
            sum(len(x) for x in req.inputs) > _INLINE_TOKENIZE_CHARS
        )
        # Small text requests are tokenised right here (microseconds); large ones and token ids
        # (the vocabulary may load on first use) on a worker thread, so the loop keeps serving.
        return await anyio.to_thread.run_sync(_prepare_ids, state, req) if heavy else _prepare_ids(state, req)
    except TokenIdError as exc:
        raise RequestError(str(exc), "input") from None
    except InputTooLongError as exc:
        raise _too_long_error(exc) from None


async def _embed(batcher: MicroBatcher, ids: list[list[int]]) -> Any:
    """The vectors for ``ids``; a full queue is 503 with ``Retry-After``, a model failure 500."""
    try:
        return await batcher.embed(ids)
    except Overloaded as exc:
        raise ApiError(
            503,
            f"server overloaded: {exc.queued} inputs are waiting (limit {exc.limit}); retry shortly",
            code="server_overloaded",
            headers={"Retry-After": "1"},
        ) from None
    except Exception:  # the model call failed (the batcher logged it): a JSON 500, connection kept
        raise ApiError(500, "The server had an error while processing your request") from None


def _health_payload(state: _ServerState) -> dict[str, Any]:
    """The ``/health`` body, read afresh on each call so the batcher's counters are current."""
    embedder, batcher = state.embedder, state.batcher
    session = getattr(embedder, "session", None)
    return {
        "status": "ok",
        "model": state.name,
        "embedding_dim": embedder.dim,
        "max_seq_length": embedder.max_seq_length,
        "int8": getattr(embedder, "int8", False),
        "providers": session.get_providers() if session is not None else [],
        "prompts": embedder.prompts,
        "limits": {
            "max_body_bytes": state.max_body_bytes,
            "max_inputs": state.max_inputs,
            "max_queued_inputs": state.max_queued_inputs,
        },
        "batcher": {
            "max_batch_size": batcher.max_batch_size,
            "queued_inputs": batcher.queued,
            "model_calls": batcher.calls,
            "inputs_embedded": batcher.inputs_done,
        },
    }


async def _on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    """Answer an ``ApiError`` in OpenAI's error shape."""
    return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)


async def _on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own 404/405 (and other HTTP errors) in OpenAI's error shape."""
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail
    return error_response(exc.status_code, message, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Any other failure: a JSON 500."""
    # Starlette logs the traceback; the client gets no internals.
    return error_response(500, "The server had an error while processing your request")


def _build_app(state: _ServerState) -> Starlette:
    """The Starlette app serving ``state``'s routes, every error answered in OpenAI's shape."""
    return Starlette(
        routes=[
            Route("/v1/embeddings", state.embeddings, methods=["POST"]),
            Route("/v1/models", state.models, methods=["GET"]),
            Route("/health", state.health, methods=["GET"]),
        ],
        exception_handlers={
            ApiError: _on_api_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
        lifespan=state.lifespan,
    )


def create_app(
    onnx_dir: Path | str | None = None,
    *,
    model_name: str | None = None,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    int8: bool = False,
    batch_size: int = 32,
    max_wait_ms: float = 0.0,
    max_queued_inputs: int = 4096,
    intra_op_num_threads: int | None = None,
    spin: bool = False,
    embedder: Any = None,
) -> Starlette:
    """Build the Starlette app; the ONNX model is loaded now, so a bad folder fails at start-up.

    Args:
        onnx_dir: folder written by ``embed_assets.export.export_onnx``.
        model_name: name reported in responses and ``/v1/models``, and the only ``model`` accepted;
            defaults to the folder name.
        max_inputs: most inputs in one request (more is 400).
        max_body_bytes: largest request body (larger is 413).
        int8: serve ``model_int8.onnx`` instead of ``model.onnx``.
        batch_size: most inputs per model call, over all the requests batched into it.
        max_wait_ms: how long the batcher waits for a batch to fill (0: run what is queued at once).
        max_queued_inputs: inputs allowed to wait for the model; beyond it new requests get 503.
        intra_op_num_threads: onnxruntime threads per call; None lets onnxruntime decide.
        spin: let onnxruntime's threads busy-wait between calls (onnxruntime's default). Off by
            default: busy threads take the CPU the event loop needs to read requests and write
            answers, which on a small machine costs more than the wake-up they save.
        embedder: an already-built backend instead of loading ``onnx_dir`` (the serving benchmark
            passes a PyTorch one): it needs ``dim``, ``max_seq_length``, ``tokenizer`` (a
            ``TextTokenizer``), ``prompts``, ``default_prompt_name`` and ``embed_ids(ids) -> array``.
    """
    if embedder is None:
        if onnx_dir is None:
            raise ValueError("give onnx_dir or embedder")
        embedder = OnnxEmbedder(onnx_dir, int8=int8, intra_op_num_threads=intra_op_num_threads, spin=spin)
    name = model_name or (Path(onnx_dir).resolve().name if onnx_dir is not None else "embeddings")
    batcher = MicroBatcher(
        embedder.embed_ids,
        embedder.dim,
        max_batch_size=batch_size,
        max_wait_ms=max_wait_ms,
        max_queued_inputs=max_queued_inputs,
    )
    state = _ServerState(
        embedder=embedder,
        batcher=batcher,
        decoder=TokenIdDecoder(),
        name=name,
        created=int(time.time()),
        max_inputs=max_inputs,
        max_body_bytes=max_body_bytes,
        max_queued_inputs=max_queued_inputs,
    )
    app = _build_app(state)
    app.state.embedder = embedder
    app.state.batcher = batcher
    app.state.model_name = name
    return app
