"""Pydantic models of the JSON the LLM must return, and the reply parser.

The models are lenient where a model's formatting habits are harmless (a string where a
list was asked, ``"Keyword"`` for ``"keyword"``, extra keys) and strict where content is
wrong (a question type outside the list, a complexity of 9, a multi-hop answer with one hop),
so a validation error is something worth sending back to the model.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

M = TypeVar("M", bound=BaseModel)

QueryType = Literal["factual", "procedural", "causal", "comparative", "keyword", "multi_hop"]

_FENCE = re.compile(r"^```(?:json|JSON)?\s*(.*?)\s*```$", re.DOTALL)
# Refusals are short and start the reply; a long reply that merely contains "I can't" is not one.
_REFUSAL = re.compile(
    r"^\W*(i['’]?m sorry|i am sorry|sorry,|i can(?:no|['’])t|i cannot|i won['’]t|i am unable|i['’]m unable|"
    r"as an ai|i apologi[sz]e|unfortunately,? i)",
    re.IGNORECASE,
)


def _as_list(value: Any) -> Any:
    """Accept ``"a"`` or ``None`` where a list of strings was asked."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    return value


def _clean_strings(values: list[Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        s = str(v).strip() if v is not None else ""
        if s and s not in out:
            out.append(s)
    return out


StrList = Annotated[list[Any], BeforeValidator(_as_list)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class Artifacts(_Model):
    """What a chunk holds that a user could search for (first LLM step per chunk)."""

    key_concepts: StrList = Field(default_factory=list, description="Main ideas, short phrases.")
    entities: StrList = Field(default_factory=list, description="Named products, components, people.")
    technical_terms: StrList = Field(
        default_factory=list,
        description="Rare exact identifiers: error codes, setting names, versions, product ids.",
    )
    processes: StrList = Field(default_factory=list, description="Procedures or steps described.")
    relationships: StrList = Field(default_factory=list, description="How the things above relate.")

    @field_validator("*", mode="after")
    @classmethod
    def _dedupe(cls, v: list[Any]) -> list[str]:
        return _clean_strings(v)[:12]

    def is_empty(self) -> bool:
        return not any((self.key_concepts, self.entities, self.technical_terms, self.processes))


class QAPair(_Model):
    """One single-hop pair."""

    question: str = Field(min_length=3, max_length=500)
    answer: str = Field(default="", max_length=2000)
    query_type: QueryType
    complexity: int = Field(ge=1, le=5)

    @field_validator("query_type", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower().replace("-", "_").replace(" ", "_") if isinstance(v, str) else v

    @field_validator("answer", mode="before")
    @classmethod
    def _none_answer(cls, v: Any) -> Any:
        return "" if v is None else v


class QAPairs(_Model):
    """The reply of the ``qa_single`` prompt.

    Invalid pairs are dropped one by one (counted in ``invalid_pairs``) rather than failing the
    whole reply: three good pairs and one with ``complexity: 7`` are worth keeping. Only when
    every pair is invalid does validation fail, so the error goes back to the model.
    An empty ``pairs`` list is valid here; the generator counts it as ``empty``.
    """

    pairs: list[QAPair]  # required: a reply without it is malformed (and retried), not empty
    invalid_pairs: SkipJsonSchema[int] = Field(default=0, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_invalid(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
            return data
        good, first_error = [], None
        for item in data["pairs"]:
            try:
                good.append(QAPair.model_validate(item))
            except ValidationError as exc:
                first_error = first_error or exc
        if data["pairs"] and not good and first_error is not None:
            raise first_error
        return {**data, "pairs": good, "invalid_pairs": len(data["pairs"]) - len(good)}


class HopContext(_Model):
    """What one hop (chunk) contributes to a multi-hop answer; ``chunk_index`` is 1-based."""

    chunk_index: int = Field(ge=1)
    context: str = Field(min_length=1, max_length=500)


class MultiHopQA(_Model):
    """The reply of the ``qa_multihop`` prompt: one question needing 2–3 chunks."""

    question: str = Field(min_length=3, max_length=600)
    answer: str = Field(default="", max_length=2000)
    hop_contexts: list[HopContext] = Field(min_length=2, max_length=3)
    complexity: int = Field(default=4, ge=1, le=5)


Score = Annotated[float, Field(ge=1, le=10)]


class JudgeScores(_Model):
    """The reply of the ``judge`` prompt, each score 1 (worst) .. 10 (best)."""

    relevance: Score
    accuracy: Score
    context_support: Score
    clarity: Score
    overall: Score


class Preflight(_Model):
    """The reply of the ``preflight`` prompt. Its content is not checked: any reply proves the endpoint."""

    ok: bool | None = None


class ReplyError(ValueError):
    """A reply that cannot be used.

    ``reason`` is the counter suffix (``empty``, ``refusal``, ``malformed``); ``detail`` is
    the message sent back to the model when the reply is retried.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@cache
def _response_format_json(model: type[BaseModel]) -> str:
    return json.dumps(
        {
            "type": "json_schema",
            "json_schema": {"name": model.__name__, "schema": model.model_json_schema(), "strict": False},
        }
    )


def response_format(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAI ``response_format`` asking for JSON that follows ``model``'s JSON schema.

    ``strict`` stays off: strict mode rejects schemas with defaults and optional keys,
    and the reply is validated with pydantic anyway. The schema is generated once per
    model (it costs about a millisecond); each call gets its own copy to mutate freely.
    """
    return json.loads(_response_format_json(model))


def _extract_json(content: str) -> str:
    text = content.strip()
    if m := _FENCE.match(text):
        text = m.group(1).strip()
    if text.startswith("{"):
        return text
    # Chatty models wrap the object in prose; take the outermost braces.
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def is_refusal(content: str) -> bool:
    """True for short replies that decline the task instead of answering."""
    text = content.strip()
    return bool(text) and not text.lstrip().startswith(("{", "`")) and bool(_REFUSAL.match(text))


def parse_reply(content: str | None, model: type[M]) -> M:
    """Parse an LLM reply into ``model``.

    Raises :class:`ReplyError` with reason ``empty`` (no text), ``refusal`` (declined) or
    ``malformed`` (not JSON, or JSON that fails validation; ``detail`` says why, briefly,
    so it can be appended to the retry prompt).
    """
    if content is None or not content.strip():
        raise ReplyError("empty", "the reply was empty")
    if is_refusal(content):
        raise ReplyError("refusal", content.strip()[:200])
    raw = _extract_json(content)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ReplyError("malformed", f"not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict):
        raise ReplyError("malformed", f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ReplyError("malformed", f"JSON does not match the schema ({errors})") from None
