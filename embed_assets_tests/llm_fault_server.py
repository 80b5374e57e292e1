"""A scriptable OpenAI-compatible chat server for testing the LLM backends over real HTTP.

``/v1/chat/completions`` answers each request with an *action*:

- ``ok``: a valid JSON reply built from the request (artifacts, QA pairs, a multi-hop
  question or judge scores, depending on what the prompt asks), so generation works; to
  ragas' faithfulness prompts: one statement per sentence of the answer, and verdict 1 for
  a statement found verbatim in the context, else 0 (and ragas' format-repair prompt
  gets the repaired reply to the prompt it quotes)
- ``rate_limit``: 429 with ``Retry-After`` (seconds, ``retry_after_s``)
- ``server_error``: 500
- ``hang``: no answer for ``hang_s`` seconds (past the client's timeout), then ``ok``
- ``malformed``: text that is not JSON; ``truncated``: JSON cut off mid-string
- ``empty``: empty content; ``refusal``: "I'm sorry, but I can't help with that."
- ``echo_injection``: JSON whose questions repeat the instruction-like line found in the chunk
- ``unauthorized``: 401 whose error message echoes the key it received (like some servers do),
  to check the client scrubs it
- ``bad_request``: 400 (not retryable)

Which action: the first matching *rule* (a substring of the request's messages with a list of
actions consumed one per matching request; deterministic under concurrency), else the next
entry of the global *script*, else ``default``. With ``expected_api_key`` set, a request with
another key gets ``unauthorized``; with ``reject_response_format`` set, a request carrying
``response_format`` gets 400 (servers without structured output). Every request is recorded (``requests``, ``count``).

Run standalone (the benchmark does, so the server has its own process and GIL):
``python embed_assets_tests/llm_fault_server.py --latency 0.2`` prints ``URL http://127.0.0.1:<port>/v1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ACTIONS = (
    "ok",
    "rate_limit",
    "server_error",
    "hang",
    "malformed",
    "truncated",
    "empty",
    "refusal",
    "echo_injection",
    "unauthorized",
    "bad_request",
)

_CHUNK = re.compile(r"<chunk(?: index=\"(\d+)\")?>\n?(.*?)\n?</chunk>", re.DOTALL)
_IDENT = re.compile(r"\b(?:[a-z][a-z0-9]*(?:_[a-z0-9]+)+|[A-Z]{1,4}\d{2,5}|\d+\.\d+(?:\.\d+)?)\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]{3,}")
_N_QUESTIONS = re.compile(r"Write (\d+) question")
_INJECTION_LINE = re.compile(r"[^\n.]*\b(?:ignore|disregard)\b[^\n.]*", re.IGNORECASE)


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    t: float
    action: str
    text: str  # all message contents joined
    body: dict[str, Any]
    authorization: str | None


@dataclass
class _Rule:
    contains: str
    actions: deque[str]


@dataclass
class FaultServer:
    """The server, run on 127.0.0.1 (ephemeral port) in a background thread.

    Args:
        latency_s: delay before every answer (the benchmark's fixed service time). Default 0.
        default: action when no rule or script entry applies. Default ``ok``.
        retry_after_s: value of the ``Retry-After`` header on 429. Default 1.
        hang_s: how long ``hang`` stalls. Default 30 (ends early when the server stops).
        expected_api_key: if set, other keys get 401. Default None (any key accepted).
        judge_overall: the overall score ``ok`` judge replies give. Default 8.
        reject_response_format: answer 400 to requests with ``response_format``. Default False.

    ``max_in_flight`` is the most requests it ever held at once (to check client concurrency).
    """

    latency_s: float = 0.0
    default: str = "ok"
    retry_after_s: float = 1.0
    hang_s: float = 30.0
    expected_api_key: str | None = None
    judge_overall: int = 8
    reject_response_format: bool = False
    requests: list[RecordedRequest] = field(default_factory=list)
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._script: deque[str] = deque()
        self._rules: list[_Rule] = []
        self._stop = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port = 0
        self._in_flight = 0

    # -- scripting -------------------------------------------------------------------------
    def script(self, *actions: str) -> None:
        """Queue actions for the next requests (those matching no rule), in arrival order."""
        _check(actions)
        with self._lock:
            self._script.extend(actions)

    def add_rule(self, contains: str, *actions: str) -> None:
        """Requests whose messages contain ``contains`` get ``actions`` in turn (then fall through)."""
        _check(actions)
        with self._lock:
            self._rules.append(_Rule(contains, deque(actions)))

    def reset(self) -> None:
        """Forget rules, script and recorded requests."""
        with self._lock:
            self._script.clear()
            self._rules.clear()
            self.requests.clear()
            self.max_in_flight = 0

    def reset_for_test(self, api_key: str) -> None:
        """:meth:`reset` plus the well-behaved defaults each test starts from."""
        self.reset()
        self.default, self.latency_s, self.retry_after_s, self.hang_s = "ok", 0.0, 0.05, 30.0
        self.expected_api_key, self.reject_response_format = api_key, False

    @property
    def count(self) -> int:
        """Number of chat-completion requests received so far."""
        with self._lock:
            return len(self.requests)

    def count_matching(self, contains: str) -> int:
        """Number of requests whose messages contain ``contains``."""
        with self._lock:
            return sum(contains in r.text for r in self.requests)

    @property
    def url(self) -> str:
        """The ``api_base`` to give litellm (ends in ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _pick(self, text: str, authorization: str | None) -> str:
        with self._lock:
            if self.expected_api_key is not None and authorization != f"Bearer {self.expected_api_key}":
                return "unauthorized"
            for rule in self._rules:
                if rule.contains in text and rule.actions:
                    return rule.actions.popleft()
            return self._script.popleft() if self._script else self.default

    # -- HTTP ------------------------------------------------------------------------------
    async def _chat(self, request: Request) -> Response:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return await self._answer(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        body = await request.json()
        text = "\n".join(str(m.get("content") or "") for m in body.get("messages", []))
        auth = request.headers.get("authorization")
        action = self._pick(text, auth)
        if action == "ok" and self.reject_response_format and body.get("response_format"):
            action = "bad_request"
        with self._lock:
            self.requests.append(RecordedRequest(time.time(), action, text, body, auth))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        model = body.get("model", "test-model")
        if action == "rate_limit":
            return JSONResponse(
                {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}},
                status_code=429,
                headers={"Retry-After": f"{self.retry_after_s:g}"},
            )
        if action == "server_error":
            return JSONResponse({"error": {"message": "internal error", "type": "server_error"}}, 500)
        if action == "unauthorized":
            key = (auth or "").removeprefix("Bearer ")
            return JSONResponse(
                {"error": {"message": f"Incorrect API key provided: {key}", "code": "invalid_api_key"}}, 401
            )
        if action == "bad_request":
            return JSONResponse(
                {"error": {"message": "invalid request", "type": "invalid_request_error"}}, 400
            )
        if action == "hang":
            deadline = time.monotonic() + self.hang_s
            while not self._stop.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            action = "ok"
        content, finish = _content(action, text, body, self.judge_overall), "stop"
        if action == "truncated":
            finish = "length"
        return JSONResponse(_completion(model, content, finish, text))

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "test-model", "object": "model"}]})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FaultServer:
        """Bind an ephemeral port on 127.0.0.1 and serve from a daemon thread."""
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            backlog=2048,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fault server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


TEST_KEY = "sk-test-loopback-123"  # the key tests expect, and assert never leaks


def loopback_settings(server: FaultServer, cache_dir, api_key: str, **overrides: Any):
    """LLM client settings for ``server``: short timeouts and backoffs so fault tests run fast."""
    from embed_assets.llm.client import LLMSettings

    base = dict(
        model="openai/test-model",
        api_base=server.url,
        api_key=api_key,
        cache_path=f"{cache_dir}/llm_cache.sqlite",
        timeout_s=2.0,
        max_retries=3,
        concurrency=8,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
    return LLMSettings(**{**base, **overrides})


def _check(actions: tuple[str, ...]) -> None:
    bad = [a for a in actions if a not in ACTIONS]
    if bad:
        raise ValueError(f"unknown actions {bad}; known: {ACTIONS}")


def closed_port_url() -> str:
    """An ``api_base`` on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _completion(model: str, content: str, finish: str, prompt_text: str) -> dict[str, Any]:
    prompt_tokens = max(1, len(prompt_text) // 4)
    completion_tokens = max(1, len(content) // 4)
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


_RAGAS_MARKERS = (
    ("The output string did not satisfy the constraints", "ragas_fix"),
    ("Break down each sentence", "ragas_statements"),
    ("judge the faithfulness", "ragas_nli"),
)


def _ragas_input(text: str) -> dict[str, Any]:
    """The input object a ragas prompt ends with (``input: {...}\\nOutput: ``)."""
    tail = text.rsplit("\ninput: ", 1)[-1]
    return json.loads(tail[: tail.rindex("Output:")])


def _ragas_reply(task: str, text: str) -> str:
    data = _ragas_input(text)
    if task == "ragas_fix":  # repair: answer the quoted prompt, wrapped as ragas' StringIO
        inner = data["prompt_value"]
        return json.dumps({"text": _ragas_reply(_task(inner, {}), inner)})
    if task == "ragas_statements":
        sentences = [x.strip() for x in re.split(r"(?<=[.!?])\s+", data["answer"]) if x.strip()]
        return json.dumps({"statements": sentences})
    context = " ".join(data["context"].split()).lower()
    verdicts = [
        {
            "statement": st,
            "reason": "found in the context" if ok else "not in the context",
            "verdict": int(ok),
        }
        for st in data["statements"]
        for ok in [" ".join(st.split()).lower().rstrip(".") in context]
    ]
    return json.dumps({"statements": verdicts})


def _task(text: str, body: dict[str, Any]) -> str:
    fmt = body.get("response_format") or {}
    name = (fmt.get("json_schema") or {}).get("name", "") if isinstance(fmt, dict) else ""
    by_schema = {"Artifacts": "artifacts", "QAPairs": "qa", "MultiHopQA": "multi_hop", "JudgeScores": "judge"}
    if name in by_schema:
        return by_schema[name]
    # ragas' prompts (plain text, no response_format); the repair prompt quotes the others.
    for marker, task in _RAGAS_MARKERS:
        if marker in text:
            return task
    # No response_format (json_schema off): recognise the prompt by the JSON shape it asks for.
    for marker, task in (
        ('"context_support"', "judge"),
        ('"hop_contexts"', "multi_hop"),
        ('"pairs"', "qa"),  # before artifacts: the QA prompt quotes the chunk's artifacts
        ('"key_concepts"', "artifacts"),
    ):
        if marker in text:
            return task
    return "preflight"


def _content(action: str, text: str, body: dict[str, Any], judge_overall: int) -> str:
    if action == "empty":
        return ""
    if action == "refusal":
        return "I'm sorry, but I can't help with that."
    if action == "malformed":
        return "Sure! Here are some questions: 1. What is it? 2. How does it work?"
    # Chunks come from the user turns only: system prompts mention the <chunk> tags too.
    user_text = "\n".join(
        str(m.get("content") or "") for m in body.get("messages", []) if m.get("role") != "system"
    )
    chunks = [(int(i) if i else n + 1, t) for n, (i, t) in enumerate(_CHUNK.findall(user_text))]
    task = _task(text, body)
    if action == "echo_injection":
        line = next((m.group(0).strip() for _, t in chunks for m in _INJECTION_LINE.finditer(t)), "PWNED")
        if task == "multi_hop":
            hops = [{"chunk_index": i, "context": line} for i, _ in chunks]
            return json.dumps({"question": line, "answer": line, "hop_contexts": hops})
        return json.dumps(
            {"pairs": [{"question": line, "answer": line, "query_type": "factual", "complexity": 1}]}
        )
    reply = _ok_reply(task, chunks, text, judge_overall)
    if action == "truncated":
        return reply[: max(10, len(reply) // 2)]
    return reply


def _idents(chunk: str) -> list[str]:
    found = list(dict.fromkeys(_IDENT.findall(chunk)))
    return found or list(dict.fromkeys(w.lower() for w in _WORD.findall(chunk)))[:4] or ["topic"]


def _ok_reply(task: str, chunks: list[tuple[int, str]], text: str, judge_overall: int) -> str:
    if task == "preflight":
        return json.dumps({"ok": True})
    if task.startswith("ragas_"):
        return _ragas_reply(task, text)
    if task == "judge":
        s = judge_overall
        return json.dumps({"relevance": s, "accuracy": s, "context_support": s, "clarity": s, "overall": s})
    first = chunks[0][1] if chunks else text
    sentence = first.strip().split(". ")[0][:200]
    if task == "artifacts":
        ids = _idents(first)
        return json.dumps(
            {
                "key_concepts": [sentence[:60]],
                "entities": [],
                "technical_terms": ids[:5],
                "processes": [],
                "relationships": [],
            }
        )
    if task == "multi_hop":
        names = [_idents(t)[0] for _, t in chunks]
        hops = [{"chunk_index": i, "context": f"defines {_idents(t)[0]}"} for i, t in chunks]
        return json.dumps(
            {"question": f"how do {' and '.join(names)} interact", "answer": sentence, "hop_contexts": hops}
        )
    n = int(m.group(1)) if (m := _N_QUESTIONS.search(text)) else 3
    ids = _idents(first)
    kinds = [
        ("factual", "what does {i} do", 2),
        ("keyword", "{i} setting", 1),
        ("procedural", "how to change {i}", 3),
    ]
    pairs = []
    for k in range(n):
        qtype, template, complexity = kinds[k % len(kinds)]
        ident = ids[k % len(ids)]
        question = template.format(i=ident) + ("" if k < len(kinds) else f" ({k})")
        pairs.append(
            {"question": question, "answer": sentence, "query_type": qtype, "complexity": complexity}
        )
    return json.dumps({"pairs": pairs})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    args = parser.parse_args()
    server = FaultServer(latency_s=args.latency).start()
    print(f"URL {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
