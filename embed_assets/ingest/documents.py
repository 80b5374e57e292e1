"""Read a corpus folder into a frame of documents.

Every ``.txt``, ``.md``/``.markdown`` and ``.html``/``.htm`` file under the folder
is read recursively. HTML is converted to Markdown-flavoured text with
html2text (it keeps headings and inline ``code``, which carry the rare
identifiers we care about). Files that cannot become useful text are skipped
and counted with a reason rather than failing the run.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import html2text
import polars as pl

from embed_assets.hashing import content_hash

SUPPORTED_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm"}

DOCUMENT_SCHEMA = {
    "doc_id": pl.String,
    "doc_path": pl.String,
    "title": pl.String,
    "text": pl.String,
    "n_chars": pl.Int64,
}


class CorpusError(ValueError):
    """The corpus folder is unusable (missing, empty, no readable documents)."""


@dataclass
class CorpusReadResult:
    documents: pl.DataFrame
    files_seen: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        self.skipped[reason] += 1
        self.skipped_files.append((path, reason))


def html_to_text(html: str) -> str:
    converter = html2text.HTML2Text()
    converter.body_width = 0  # no hard wrapping: it would split identifiers and sentences
    converter.ignore_images = True
    converter.ignore_links = True
    return converter.handle(html)


_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _title_for(path: Path, raw: str, text: str) -> str:
    if path.suffix.lower() in {".html", ".htm"} and (m := _HTML_TITLE.search(raw)):
        return re.sub(r"\s+", " ", m.group(1)).strip()
    if m := _HEADING.search(text):
        return m.group(1).strip()
    return path.stem.replace("-", " ").replace("_", " ")


def read_corpus(corpus_dir: str | Path) -> CorpusReadResult:
    """Read every supported file under ``corpus_dir``.

    Args:
        corpus_dir: folder to scan recursively.

    Returns:
        A :class:`CorpusReadResult` whose ``documents`` frame has one row per unique
        document (``doc_id`` = content hash of the text) and whose counters say which
        files were skipped and why: ``unsupported_extension``, ``binary``,
        ``not_utf8``, ``empty``, ``duplicate``.

    Raises:
        CorpusError: the folder is missing, not a folder, or yields no document.
    """
    root = Path(corpus_dir)
    if not root.exists():
        raise CorpusError(f"corpus_dir does not exist: {root}")
    if not root.is_dir():
        raise CorpusError(f"corpus_dir is not a folder: {root}")

    result = CorpusReadResult(documents=pl.DataFrame(schema=DOCUMENT_SCHEMA))
    rows: list[dict] = []
    seen: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        result.files_seen += 1
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            result.skip(rel, "unsupported_extension")
            continue
        data = path.read_bytes()
        if b"\x00" in data[:8192]:
            result.skip(rel, "binary")
            continue
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError:
            result.skip(rel, "not_utf8")
            continue
        text = html_to_text(raw) if path.suffix.lower() in {".html", ".htm"} else raw
        text = text.replace("\r\n", "\n").strip()
        if not text:
            result.skip(rel, "empty")
            continue
        doc_id = content_hash(text)
        if doc_id in seen:
            result.skip(rel, "duplicate")
            continue
        seen[doc_id] = rel
        rows.append(
            {
                "doc_id": doc_id,
                "doc_path": rel,
                "title": _title_for(path, raw, text),
                "text": text,
                "n_chars": len(text),
            }
        )
    if result.files_seen == 0:
        raise CorpusError(f"corpus_dir is empty: {root}")
    if not rows:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(result.skipped.items()))
        raise CorpusError(f"corpus_dir has no readable .txt/.md/.html document: {root} (skipped: {reasons})")
    result.documents = pl.DataFrame(rows, schema=DOCUMENT_SCHEMA)
    return result
