"""An async LLM client over ``litellm.acompletion`` built for bulk synthetic-data generation.

What it adds on top of litellm, and why:

- **Concurrency** (``asyncio.Semaphore``) and **client-side rate limits** (token buckets for
  requests/min and tokens/min), so a run stays under a provider's quota instead of
  collecting 429s.
- **Retries** (tenacity) with exponential backoff and jitter on 429, 5xx, timeouts and
  connection errors, honouring ``Retry-After``. Other 4xx fail at once: retrying a 400 or
  401 only burns quota. litellm's and the OpenAI SDK's own retries are switched off so
  every request is counted and paced here.
- **The response cache** (:mod:`~embed_assets.llm.cache`): each reply is
  committed as it arrives, before it is parsed, so a killed run resumes where it stopped.
- **JSON replies** parsed with pydantic; a malformed reply is retried with the validation
  error appended, up to ``max_parse_attempts`` (``complete_json``). ``complete_text``
  returns the raw reply, through the same cache and limits, for callers that parse it
  themselves (ragas' prompts, :mod:`~embed_assets.quality.faithfulness`).
- **Preflight**: one tiny call before the first uncached request; a wrong key, a wrong
  model name or an unreachable endpoint raises :class:`LLMEndpointError` at once, naming
  the endpoint, instead of failing every chunk.
- **Secrets**: the API key is never logged, cached, counted or put in an exception; error
  text from the server (which may echo the key) is scrubbed before it is surfaced, and a
  log filter scrubs it from litellm's own loggers too.
"""

from __future__ import annotations

import os

# Before importing litellm: otherwise it downloads the model cost map at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import concurrent.futures
import email.utils
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import litellm
from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from embed_assets.llm.cache import ResponseCache, cache_key
from embed_assets.llm.prompts import Prompt, load_prompt
from embed_assets.llm.schemas import (
    Preflight,
    ReplyError,
    is_refusal,
    parse_reply,
    response_format,
)

logger = logging.getLogger("embed_assets.generation")

# litellm prints "Give Feedback / Get Help" banners to stdout on every exception otherwise.
litellm.suppress_debug_info = True
if "LITELLM_LOG" not in os.environ:
    # litellm logs a line per request at INFO; a 10k-chunk run would flood the run log.
    # LITELLM_LOG (litellm's own switch) still turns it back on.
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

_REFUSAL_MARK = "[refusal] "
_MAX_ECHO_CHARS = 2000  # of a bad reply quoted back in the repair turn


@dataclass
class LLMSettings:
    """How to reach the LLM and how hard to push it.

    Args:
        model: litellm model string: ``"openai/gpt-4o-mini"``, or ``"openai/<served-name>"``
            with ``api_base`` for OpenAI-compatible servers (vLLM, NIM, llama.cpp, Ollama).
        api_base: the server URL (``http://host:8000/v1``); None uses the provider's default.
        api_key: the key, passed in by the caller (read from the environment there). Never
            logged, cached or shown; excluded from ``repr``. None for keyless local servers.
        temperature: sampling temperature. Default 0.7 (diverse questions).
        max_tokens: reply length cap. Default 1024.
        timeout_s: per-request timeout in seconds. Default 60.
        max_retries: retries after the first attempt on 429/5xx/timeouts/connection errors. Default 5.
        concurrency: requests in flight at once. Default 8.
        requests_per_minute: client-side request rate cap. Default None (no cap).
        tokens_per_minute: client-side token rate cap (prompt estimate + max_tokens,
            corrected by the reported usage). Default None (no cap).
        max_parse_attempts: attempts per prompt when the reply is not valid JSON for the
            schema; later attempts append the validation error. Default 3.
        cache_path: SQLite response cache file; None keeps no cache (every run calls again).
        seed: sent to the model where supported and part of every cache key. Default 42.
        json_schema: ask for JSON-schema structured output (``response_format``). The prompts
            spell out the JSON shape anyway, so if the endpoint rejects ``response_format``
            the client falls back to prompt-only JSON after the preflight. Default True.
        backoff_initial_s: first retry delay (doubles each retry, with jitter). Default 1.
        backoff_max_s: cap on one retry delay, also on an honoured ``Retry-After``. Default 60.
    """

    model: str = "openai/gpt-4o-mini"
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    temperature: float = 0.7
    max_tokens: int = 1024
    timeout_s: float = 60.0
    max_retries: int = 5
    concurrency: int = 8
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_parse_attempts: int = 3
    cache_path: str | None = None
    seed: int = 42
    json_schema: bool = True
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        checks = {
            "concurrency": self.concurrency >= 1,
            "max_retries": self.max_retries >= 0,
            "max_parse_attempts": self.max_parse_attempts >= 1,
            "timeout_s": self.timeout_s > 0,
            "max_tokens": self.max_tokens >= 1,
            "temperature": 0 <= self.temperature <= 2,
            "requests_per_minute": self.requests_per_minute is None or self.requests_per_minute > 0,
            "tokens_per_minute": self.tokens_per_minute is None or self.tokens_per_minute > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid LLMSettings fields: {bad}")

    @property
    def endpoint(self) -> str:
        """Where requests go, for messages (never includes the key)."""
        return self.api_base or f"the default {self.model.split('/', 1)[0]} endpoint"

    def sampling_params(self) -> dict[str, Any]:
        """What changes the reply besides the messages: part of every cache key."""
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "json_schema": self.json_schema,
        }


class LLMEndpointError(RuntimeError):
    """The endpoint cannot be used at all (wrong key, unknown model, unreachable).

    Raised by the preflight, or when such an error shows up mid-run; the run stops, and
    everything finished so far is already in the cache. The message names the endpoint
    and the model, never the key.
    """


class DropError(Exception):
    """One request could not produce a usable reply; ``reason`` is the counter suffix
    (``malformed``, ``empty``, ``refusal``, ``timeout``, ``rate_limit``, ``http_error``,
    ``connection``). The run goes on."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# -- secrets -----------------------------------------------------------------------------------


class _SecretFilter(logging.Filter):
    """Replaces registered secrets in log records (ours and litellm's/openai's/httpx's)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            try:
                message = record.getMessage()
            except Exception:  # a broken format string is not ours to fix
                return True
            scrubbed = scrub(message, self.secrets)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        return True


_SECRET_FILTER = _SecretFilter()
for _name in ("embed_assets.generation", "LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "openai", "httpx"):
    logging.getLogger(_name).addFilter(_SECRET_FILTER)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (of 4+ characters) replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


# -- rate limiting -----------------------------------------------------------------------------


class TokenBucket:
    """An async token bucket: ``per_minute`` units refill continuously.

    Args:
        per_minute: the sustained rate.
        burst_s: bucket size in seconds of refill. Default 10: a short burst is allowed, but
            never a whole minute's quota at once (providers meter over shorter windows too).

    A request larger than the bucket is clamped to its size so it can still go through.
    ``refund`` returns units (the token estimate was too high); ``debit`` takes more.
    """

    def __init__(self, per_minute: float, burst_s: float = 10.0):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self, n: float = 1.0) -> None:
        n = min(n, self.capacity)
        async with self._lock:  # FIFO: waiters are served in order
            while True:
                self._refill()
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)

    def refund(self, n: float) -> None:
        self._refill()
        self.tokens = min(self.capacity, self.tokens + n)

    def debit(self, n: float) -> None:
        self._refill()
        self.tokens -= n  # may go negative: later requests wait for it


# -- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    kind: (
        str  # rate_limit | server_error | timeout | connection | auth | not_found | bad_request | http_error
    )
    status: int | None
    retry_after: float | None

    @property
    def retryable(self) -> bool:
        return self.kind in ("rate_limit", "server_error", "timeout", "connection")


_CONNECTION_TEXT = re.compile(
    r"OpenAIException - Connection error\.|Cannot connect to host|Connection refused|"
    r"Name or service not known|nodename nor servname|Temporary failure in name resolution"
)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it wraps, following both ``__cause__`` and ``__context__``
    (litellm's mapping code sometimes sets the context to an unrelated internal error)."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(out) < 20:
        e = todo.pop(0)
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo.extend((e.__cause__, e.__context__))
    return out


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from ``Retry-After``/``retry-after-ms`` on the error or any error it wraps."""
    for e in _chain(exc):
        for headers in (
            getattr(e, "litellm_response_headers", None),
            getattr(e, "headers", None),
            getattr(getattr(e, "response", None), "headers", None),
        ):
            if not headers:
                continue
            try:
                ms = headers.get("retry-after-ms")
                if ms is not None:
                    return max(0.0, float(ms) / 1000.0)
                value = headers.get("retry-after")
            except Exception:
                continue
            if value is None:
                continue
            try:
                return max(0.0, float(value))
            except ValueError:
                try:  # HTTP-date form
                    return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
                except (TypeError, ValueError):
                    continue
    return None


def classify(exc: BaseException) -> _Failure:
    """What kind of failure ``exc`` is, looking through the exceptions it wraps.

    litellm reports a refused connection as an ``InternalServerError`` wrapping
    ``openai.APIConnectionError``, so the cause chain decides, not the outer class.
    """
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    if isinstance(exc, asyncio.TimeoutError | TimeoutError) or names & {
        "Timeout",
        "APITimeoutError",
        "ReadTimeout",
        "ConnectTimeout",
        "TimeoutException",
    }:
        return _Failure("timeout", 408, None)
    if (
        names & {"APIConnectionError", "ConnectError", "ClientConnectorError", "ConnectionRefusedError"}
        or any(isinstance(e, ConnectionError) for e in chain)
        # litellm sometimes loses the cause (its mapping runs inside another `except`) and
        # reports a synthesized 500 whose text is the OpenAI SDK's "Connection error.".
        or any(_CONNECTION_TEXT.search(str(e)) for e in chain)
    ):
        return _Failure("connection", None, None)
    status = next((s for e in chain if isinstance(s := getattr(e, "status_code", None), int)), None)
    if status == 429:
        return _Failure("rate_limit", 429, _retry_after(exc))
    if status is not None and status >= 500:
        return _Failure("server_error", status, _retry_after(exc))
    if status in (401, 403):
        return _Failure("auth", status, None)
    if status == 404:
        return _Failure("not_found", status, None)
    if status in (400, 413, 422):
        return _Failure("bad_request", status, None)
    return _Failure("http_error", status, None)


def _drop_reason(f: _Failure) -> str:
    return {"rate_limit": "rate_limit", "timeout": "timeout", "connection": "connection"}.get(
        f.kind, "http_error"
    )


# -- one unit of work ---------------------------------------------------------------------------


async def guarded(
    client: LLMClient,
    coro: Coroutine[Any, Any, T],
    default: T,
    *,
    prefix: str,
    what: str,
    progress: Progress | None = None,
    malformed: tuple[type[BaseException], ...] = (),
) -> T:
    """Await one unit (a chunk, a bundle, a pair) so that a reply the model got wrong costs only
    that unit.

    :class:`LLMEndpointError` propagates (every other unit would fail the same way); a
    :class:`DropError` (a refused, empty, cut or unparseable reply, classified by the client) is
    counted as ``<prefix>:<reason>`` and an exception of ``malformed`` (a parser's complaint
    about one reply) as ``<prefix>:malformed``; the unit then yields ``default``. Anything else
    is a bug, not data: it fails the step with its traceback (the response cache keeps every
    finished call, so a rerun after the fix pays for none of them again).
    """
    try:
        return await coro
    except DropError as drop:
        client.stats[f"{prefix}:{drop.reason}"] += 1
        logger.debug("%s (%s): %s", prefix, drop.reason, client.scrub(drop.detail)[:200])
        return default
    except malformed:
        client.stats[f"{prefix}:malformed"] += 1
        logger.debug("%s: a malformed reply in %s", prefix, what)
        return default
    finally:
        if progress is not None:
            progress.advance()


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """Logs ``done/total``, records per second and ETA at most every ``every_s`` seconds.

    Args:
        total: number of records expected.
        label: what is counted (``"sdg chunks"``).
        every_s: minimum seconds between log lines. Default 10.
    """

    def __init__(self, total: int, label: str, every_s: float = 10.0):
        self.total, self.label, self.every_s = total, label, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            logger.info(
                "%s: %d/%d done, %.1f records/s, ETA %.0fs", self.label, self.done, self.total, rate, eta
            )


# -- the client --------------------------------------------------------------------------------


_REGISTERED: set[str] = set()


def _register_unknown_model(model: str) -> None:
    """Give litellm a zero-price entry for a model it has no price for (self-hosted ones).

    Why: after every response litellm prices it; for a model missing from its cost map
    that walks every name generalization and records a zero-cost diagnostic: measured here
    at 5–20% of the client's CPU per request, which caps throughput at high concurrency on
    a small machine. Known
    models are left alone, so hosted models keep their real prices in litellm's logs.
    """
    if model in _REGISTERED:
        return
    _REGISTERED.add(model)
    try:
        litellm.get_model_info(model)
        return  # known: keep litellm's entry
    except Exception:
        pass
    provider = model.split("/", 1)[0] if "/" in model else "openai"
    try:
        litellm.register_model(
            {
                model: {
                    "litellm_provider": provider,
                    "mode": "chat",
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                }
            }
        )
    except Exception as exc:  # an optimisation only
        logger.debug("could not register %s with litellm: %r", model, exc)


class LLMClient:
    """Async, cached, rate-limited, retrying access to one LLM endpoint.

    Args:
        settings: endpoint, key and limits (:class:`LLMSettings`).
        cache: response cache; None opens ``settings.cache_path`` when set, else no cache.
        stats: counter to add to (``llm_calls``, ``cache_hits``, ``retries``, ``preflight_calls``,
            ``dropped:<reason>`` is left to callers); a new one when None.

    Use from one event loop at a time; the asyncio primitives are recreated when a new
    loop (a new ``asyncio.run``) uses the client, so a client can serve several runs.
    """

    def __init__(
        self, settings: LLMSettings, cache: ResponseCache | None = None, stats: Counter | None = None
    ):
        self.settings = settings
        self.cache = (
            cache
            if cache is not None
            else (ResponseCache(settings.cache_path) if settings.cache_path else None)
        )
        self.stats: Counter = stats if stats is not None else Counter()
        self._secrets = [settings.api_key] if settings.api_key else []
        _SECRET_FILTER.secrets.update(self._secrets)
        self._use_json_schema = settings.json_schema
        _register_unknown_model(settings.model)
        self._preflight_done = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._repair = load_prompt("repair")

    # -- per-loop state ------------------------------------------------------------------
    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        self._loop = loop
        s = self.settings
        self._semaphore = asyncio.Semaphore(s.concurrency)
        self._preflight_lock = asyncio.Lock()
        self._rpm = TokenBucket(s.requests_per_minute) if s.requests_per_minute else None
        self._tpm = TokenBucket(s.tokens_per_minute) if s.tokens_per_minute else None
        self._session = None  # one aiohttp session per run, made on first request

    def _shared_session(self) -> Any:
        """An aiohttp session for this run's event loop, shared by all its requests.

        Without it litellm opens a session (and TCP connections) per client it caches;
        with it, connections are pooled across the run, which costs noticeably less CPU
        per request at high concurrency. None when aiohttp is not installed.
        """
        if self._session is None or self._session.closed:
            try:
                import aiohttp
            except ImportError:
                return None
            self._session = aiohttp.ClientSession()
        return self._session

    async def aclose(self) -> None:
        """Close this run's HTTP session; call when the run's requests are done."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def scrub(self, text: str) -> str:
        """``text`` without the API key."""
        return scrub(text, self._secrets)

    # -- preflight -----------------------------------------------------------------------
    async def preflight(self) -> None:
        """One tiny request proving the endpoint, the model and the key work.

        Raises :class:`LLMEndpointError` (key scrubbed, endpoint named) on 401/403 (key),
        404 (model or URL), a refused connection, DNS failure or timeout (no retry: fail
        fast), or when 429/5xx persist through two retries. If the endpoint rejects ``response_format``
        (400), JSON-schema output is switched off for this client and the call repeated.
        """
        self._bind_loop()
        prompt = load_prompt("preflight")
        messages = prompt.messages()
        try:
            await self._request(messages, Preflight, max_tokens=16, retries=2, preflight=True)
        except LLMEndpointError:
            raise
        except _CallFailed as failed:
            f = failed.failure
            if f.kind == "bad_request" and self._use_json_schema:
                logger.warning(
                    "LLM endpoint %s rejected response_format=json_schema for %s; "
                    "falling back to JSON instructions in the prompt",
                    self.settings.endpoint,
                    self.settings.model,
                )
                self._use_json_schema = False
                self.stats["json_schema_disabled"] = 1
                try:
                    await self._request(messages, Preflight, max_tokens=16, retries=2, preflight=True)
                except _CallFailed as again:
                    raise self._endpoint_error(again.failure, again.detail) from None
            else:
                raise self._endpoint_error(f, failed.detail) from None
        self._preflight_done = True

    def _endpoint_error(self, f: _Failure, detail: str) -> LLMEndpointError:
        s = self.settings
        where = f"LLM endpoint {s.endpoint} (model {s.model!r})"
        hint = {
            "auth": f"rejected the API key (HTTP {f.status}); check the key the run was given",
            "not_found": f"does not know this model or URL (HTTP {f.status}); check model and api_base",
            "connection": "is unreachable (connection failed); is the server running and api_base right?",
            "timeout": f"did not answer within {s.timeout_s:g}s",
            "rate_limit": "kept answering 429 (rate limited)",
            "server_error": f"kept failing with HTTP {f.status}",
        }.get(f.kind, f"failed with HTTP {f.status}")
        return LLMEndpointError(f"{where} {hint}: {self.scrub(detail)[:300]}")

    async def _ensure_preflight(self) -> None:
        if self._preflight_done:
            return
        async with self._preflight_lock:
            if not self._preflight_done:
                await self.preflight()

    # -- requests ------------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        f = classify(exc) if exc is not None else None
        if f is not None and f.retry_after is not None:
            # Honour the server's Retry-After (capped), plus a little jitter so that the
            # requests it throttled together do not all come back in the same instant.
            return min(f.retry_after, self.settings.backoff_max_s) + random.uniform(0, 0.1)
        s = self.settings
        return wait_exponential_jitter(
            initial=s.backoff_initial_s, max=s.backoff_max_s, jitter=s.backoff_initial_s
        )(state)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        f = classify(exc) if exc is not None else _Failure("http_error", None, None)
        self.stats["retries"] += 1
        self.stats[f"retry:{f.kind}"] += 1
        logger.debug(
            "retrying %s after %s (attempt %d, waiting %.2fs)",
            self.settings.endpoint,
            f.kind if f.status is None else f"{f.kind} {f.status}",
            state.attempt_number,
            state.upcoming_sleep,
        )

    def _completion_kwargs(
        self, messages: list[dict[str, str]], schema: type[BaseModel] | None, max_tokens: int
    ) -> dict[str, Any]:
        """litellm's ``acompletion`` arguments for one request (no retries of its own)."""
        s = self.settings
        kwargs: dict[str, Any] = {
            "model": s.model,
            "messages": messages,
            "temperature": s.temperature,
            "max_tokens": max_tokens,
            "seed": s.seed,
            "timeout": s.timeout_s,
            "max_retries": 0,  # the OpenAI SDK's own retries: off, retried (and counted) here
            "drop_params": True,  # e.g. providers without `seed`
        }
        if s.api_base:
            kwargs["api_base"] = s.api_base
        if s.api_key:
            kwargs["api_key"] = s.api_key
        session = self._shared_session()
        if session is not None:
            kwargs["shared_session"] = session
        if schema is not None and self._use_json_schema:
            kwargs["response_format"] = response_format(schema)
        return kwargs

    def _reply(self, resp: Any, estimate: float) -> tuple[str, dict[str, Any]]:
        """(content, usage) of a completion; settles the token budget's estimate against the
        tokens the provider counted."""
        usage = getattr(resp, "usage", None)
        total = getattr(usage, "total_tokens", None)
        if self._tpm and isinstance(total, int):
            (self._tpm.refund if total < estimate else self._tpm.debit)(abs(estimate - total))
        message = resp.choices[0].message
        content = message.content or ""
        refusal = getattr(message, "refusal", None)
        if refusal and not content:
            content = _REFUSAL_MARK + str(refusal)
        finish = getattr(resp.choices[0], "finish_reason", None)
        return content, {"total_tokens": total, "finish_reason": finish}

    async def _request(
        self,
        messages: list[dict[str, str]],
        schema: type[BaseModel] | None,
        *,
        max_tokens: int | None = None,
        retries: int | None = None,
        preflight: bool = False,
    ) -> tuple[str, dict[str, Any]]:
        """Send one chat request with retries; returns (content, usage).

        Raises ``_CallFailed`` once retries are exhausted or on a non-retryable error,
        and :class:`LLMEndpointError` mid-run on 401/403/404 (they would fail every call).
        """
        s = self.settings
        max_tokens = max_tokens or s.max_tokens
        kwargs = self._completion_kwargs(messages, schema, max_tokens)
        estimate = sum(len(m["content"]) for m in messages) / 4 + max_tokens
        n_retries = s.max_retries if retries is None else retries

        def retryable(exc: BaseException) -> bool:
            f = classify(exc)
            # The preflight fails fast on a dead endpoint; only throttling and 5xx get a retry.
            return f.kind in ("rate_limit", "server_error") if preflight else f.retryable

        async def attempt() -> tuple[str, dict[str, Any]]:
            if self._rpm:
                await self._rpm.acquire(1)
            if self._tpm:
                await self._tpm.acquire(estimate)
            async with self._semaphore:
                self.stats["preflight_calls" if preflight else "llm_calls"] += 1
                # Belt and braces: litellm enforces `timeout`, this bounds anything it does not.
                resp = await asyncio.wait_for(litellm.acompletion(**kwargs), timeout=s.timeout_s + 10)
            return self._reply(resp, estimate)

        try:
            async for state in AsyncRetrying(
                stop=stop_after_attempt(n_retries + 1),
                wait=self._wait,
                retry=retry_if_exception(retryable),
                before_sleep=self._before_sleep,
                reraise=True,
            ):
                with state:
                    return await attempt()
        except Exception as exc:  # classified below; never re-raised with the key in it
            f = classify(exc)
            detail = self.scrub(str(exc))
            if not preflight and f.kind in ("auth", "not_found"):
                raise self._endpoint_error(f, detail) from None
            raise _CallFailed(f, detail) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _cached_call(
        self,
        prompt_key: str,
        messages: list[dict[str, str]],
        schema: type[BaseModel] | None,
        *,
        chunk_hashes: list[str],
        chunk_ids: list[str],
        extra: Mapping[str, Any],
    ) -> str:
        """The reply to ``messages``: from the cache, else from the endpoint (and then cached).

        The one place a request is keyed, looked up, preflighted, sent and stored, shared by
        :meth:`complete_json` and :meth:`complete_text`. The reply is committed before anyone
        parses it. Raises :class:`DropError` when the request failed after its retries.
        """
        s = self.settings
        key = cache_key(
            chunk_hashes=chunk_hashes,
            prompt=prompt_key,
            model=s.model,
            params=s.sampling_params(),
            messages=messages,
            extra=extra,
        )
        content = self.cache.get(key) if self.cache is not None else None
        if content is not None:
            self.stats["cache_hits"] += 1
        else:
            await self._ensure_preflight()
            try:
                content, meta = await self._request(messages, schema)
            except _CallFailed as failed:
                raise DropError(_drop_reason(failed.failure), failed.detail) from None
            if self.cache is not None:
                self.cache.put(
                    key, content, prompt=prompt_key, model=s.model, chunk_ids=chunk_ids, usage=meta
                )
        if content.startswith(_REFUSAL_MARK):  # an API-level refusal, cached like any reply
            raise DropError("refusal", content[len(_REFUSAL_MARK) :][:200])
        return content

    async def complete_json(
        self,
        prompt: Prompt,
        messages: list[dict[str, str]],
        schema: type[M],
        *,
        chunk_hashes: Iterable[str],
        chunk_ids: Iterable[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> M:
        """Get a reply to ``messages`` parsed into ``schema``, from the cache or the endpoint.

        Args:
            prompt: the prompt the messages were rendered from (its ``name@vN`` keys the cache).
            messages: the chat messages to send.
            schema: the pydantic model the reply must validate against.
            chunk_hashes: content hashes of the chunk(s) in the prompt (cache key).
            chunk_ids: chunk ids stored with the cached row (lineage only).
            extra: more cache-key fields that distinguish otherwise equal requests.

        A malformed or empty reply is retried with the error appended, up to
        ``max_parse_attempts`` (each attempt is cached under its own key, so a re-run replays
        the same sequence). Raises :class:`DropError` when no usable reply came, with the
        reason to count; :class:`LLMEndpointError` when the endpoint is unusable.
        """
        self._bind_loop()
        s = self.settings
        chunk_hashes, chunk_ids = list(chunk_hashes), list(chunk_ids)
        turn = list(messages)
        last: ReplyError | None = None
        for attempt in range(s.max_parse_attempts):
            content = await self._cached_call(
                prompt.key,
                turn,
                schema,
                chunk_hashes=chunk_hashes,
                chunk_ids=chunk_ids,
                extra={**(extra or {}), "attempt": attempt},
            )
            try:
                return parse_reply(content, schema)
            except ReplyError as err:
                if err.reason == "refusal":
                    raise DropError("refusal", err.detail) from None
                last = err
                self.stats["parse_retries" if attempt + 1 < s.max_parse_attempts else "parse_failures"] += 1
                # Show the model its reply and what was wrong with it (the validation error).
                turn = [
                    *messages,
                    {"role": "assistant", "content": content[:_MAX_ECHO_CHARS]},
                    *self._repair.messages(error=err.detail),
                ]
        assert last is not None
        raise DropError(last.reason, last.detail)

    async def complete_text(
        self,
        prompt_key: str,
        messages: list[dict[str, str]],
        *,
        chunk_hashes: Iterable[str],
        chunk_ids: Iterable[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """Get the raw text reply to ``messages``, from the cache or the endpoint.

        For callers that parse replies themselves (ragas' prompts). Same cache, preflight,
        rate limits and retries as :meth:`complete_json`, but no ``response_format`` and no
        parse-and-repair loop.

        Args:
            prompt_key: what the messages are (``name@version``); part of the cache key.
            messages: the chat messages to send (their exact text is part of the key).
            chunk_hashes: content hashes of the chunk(s) the request is about (cache key).
            chunk_ids: chunk ids stored with the cached row (lineage only).
            extra: more cache-key fields that distinguish otherwise equal requests.

        Raises :class:`DropError` when the call failed after its retries, or the reply is
        empty (``empty``) or a refusal (``refusal``); :class:`LLMEndpointError` when the
        endpoint is unusable.
        """
        self._bind_loop()
        content = await self._cached_call(
            prompt_key,
            list(messages),
            None,
            chunk_hashes=list(chunk_hashes),
            chunk_ids=list(chunk_ids),
            extra=dict(extra or {}),
        )
        if not content.strip():
            raise DropError("empty")
        if is_refusal(content):
            raise DropError("refusal", content.strip()[:200])
        return content


class _CallFailed(Exception):
    def __init__(self, failure: _Failure, detail: str):
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # uvloop, where installed (uvicorn[standard] brings it), has a cheaper event loop:
    # at high concurrency on a small machine the loop's own overhead delays every request.
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code.

    Runs it on a new event loop (uvloop when installed) in this thread, or, when this
    thread already runs an event loop (a notebook, an async caller), in a fresh thread so
    the caller's loop is not re-entered.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_run, coro).result()


__all__ = [
    "DropError",
    "LLMClient",
    "LLMEndpointError",
    "LLMSettings",
    "Progress",
    "TokenBucket",
    "classify",
    "run_sync",
    "scrub",
]
