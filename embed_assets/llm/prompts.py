"""Versioned prompt files: loading and rendering.

Every prompt the LLM backends send lives in ``embed_assets/llm/prompts/<name>_v<N>.txt``
(shipped as package data, read with :mod:`importlib.resources`), never as a string in code.
A file starts with ``# key: value`` header lines (``name`` and ``version`` must match the
file name; other ``#`` lines are comments) followed by sections introduced by ``---<section>---`` lines: ``system``/``user``
for chat prompts, ``example``/``template`` for the base-model few-shot prompt.

Placeholders are ``{{name}}``. Single braces are left alone because the prompts show JSON.
The prompt's ``name@vN`` and the hash of its text go into every cache key, so editing or
bumping a prompt never reuses responses written for another one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from embed_assets.hashing import content_hash

_PACKAGE = "embed_assets.llm"
_DIR = "prompts"
_HEADER = re.compile(r"^#\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$")
_SECTION = re.compile(r"^---([a-z_]+)---\s*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class PromptError(ValueError):
    """A prompt file is missing, malformed, or rendered with missing/unknown variables."""


@dataclass(frozen=True)
class Prompt:
    """One parsed prompt file.

    Attributes:
        name: the prompt's name (``qa_single``), from the header and the file name.
        version: integer version, from the header and the file name (``_v1``).
        sections: ordered ``(section, text)`` pairs; ``example`` may repeat.
        meta: every other header field (``description``...).
        text_hash: hash of the whole file, part of cache keys.
    """

    name: str
    version: int
    sections: tuple[tuple[str, str], ...]
    meta: dict[str, str] = field(default_factory=dict, compare=False)
    text_hash: str = ""

    @property
    def key(self) -> str:
        """``name@vN``: what cache keys and lineage record."""
        return f"{self.name}@v{self.version}"

    def section(self, name: str) -> str:
        """The text of the first section called ``name``; raises if absent."""
        for sec, text in self.sections:
            if sec == name:
                return text
        raise PromptError(f"prompt {self.key} has no ---{name}--- section")

    def all_sections(self, name: str) -> list[str]:
        """Every section called ``name``, in file order (the few-shot examples)."""
        return [text for sec, text in self.sections if sec == name]

    def messages(self, **variables: object) -> list[dict[str, str]]:
        """Chat messages (``system`` then ``user``) with ``{{placeholders}}`` filled in."""
        out = []
        for role in ("system", "user"):
            texts = self.all_sections(role)
            if texts:
                out.append({"role": role, "content": render(texts[0], variables, self.key)})
        if not out:
            raise PromptError(f"prompt {self.key} has neither a system nor a user section")
        return out


def render(template: str, variables: dict[str, object], where: str = "prompt") -> str:
    """Replace every ``{{name}}`` in ``template`` with ``str(variables[name])``.

    Raises :class:`PromptError` naming the prompt (``where``) on a missing variable, so a
    typo fails loudly instead of sending a literal ``{{name}}`` to the model.
    Substitution is a single pass, so a value containing ``{{x}}`` (chunk text) is not expanded.
    """
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - variables.keys())
    if missing:
        raise PromptError(f"{where}: missing variables {missing}")
    return _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), template)


def parse_prompt(text: str, *, expected_name: str, expected_version: int) -> Prompt:
    """Parse a prompt file's text; the header must agree with the file name."""
    meta: dict[str, str] = {}
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if not sections:
            if m := _HEADER.match(line):
                meta.setdefault(m.group(1), m.group(2))
                continue
            if not line.strip() or line.startswith("#"):  # blank lines and free comments
                continue
        if m := _SECTION.match(line):
            sections.append((m.group(1), []))
        elif sections:
            sections[-1][1].append(line)
        else:
            raise PromptError(f"{expected_name}_v{expected_version}: text before the first ---section---")
    name, version = meta.pop("name", None), meta.pop("version", None)
    if name != expected_name or str(version) != str(expected_version):
        raise PromptError(
            f"{expected_name}_v{expected_version}.txt: header says name={name!r} version={version!r}"
        )
    return Prompt(
        name=name,
        version=int(version),
        sections=tuple((sec, "\n".join(lines).strip("\n")) for sec, lines in sections),
        meta=meta,
        text_hash=content_hash(text),
    )


@cache
def load_prompt(name: str, version: int = 1) -> Prompt:
    """Load ``prompts/<name>_v<version>.txt`` from the installed package (cached).

    Args:
        name: prompt name, e.g. ``"qa_single"``.
        version: prompt version; defaults to 1. Bump it (new file) when changing a prompt's meaning.
    """
    resource = resources.files(_PACKAGE).joinpath(_DIR).joinpath(f"{name}_v{version}.txt")
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PromptError(f"no prompt file {_DIR}/{name}_v{version}.txt in {_PACKAGE}") from exc
    return parse_prompt(text, expected_name=name, expected_version=version)


def prompts_version(length: int = 8) -> str:
    """A hash of every packaged prompt file: part of the generation asset's code version."""
    folder = resources.files(_PACKAGE).joinpath(_DIR)
    texts = sorted(
        (p.name, p.read_text(encoding="utf-8")) for p in folder.iterdir() if p.name.endswith(".txt")
    )
    return content_hash(repr(texts), length)
