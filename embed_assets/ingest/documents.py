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
    # Other names of the same text (a copied file, a repeated row): skipped as duplicates, but a
    # labelled query that names one of them still finds the document.
    "aliases": pl.List(pl.String),
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


def _document_row(doc_id: str, doc_path: str, title: str, text: str) -> dict:
    """One row of :data:`DOCUMENT_SCHEMA`; duplicates found later append to its ``aliases``."""
    return {
        "doc_id": doc_id,
        "doc_path": doc_path,
        "title": title,
        "text": text,
        "n_chars": len(text),
        "aliases": [],
    }


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
    seen: dict[str, dict] = {}  # doc_id -> its row
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
            seen[doc_id]["aliases"].append(rel)
            continue
        seen[doc_id] = _document_row(doc_id, rel, _title_for(path, raw, text), text)
        rows.append(seen[doc_id])
    if result.files_seen == 0:
        raise CorpusError(f"corpus_dir is empty: {root}")
    if not rows:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(result.skipped.items()))
        raise CorpusError(f"corpus_dir has no readable .txt/.md/.html document: {root} (skipped: {reasons})")
    result.documents = pl.DataFrame(rows, schema=DOCUMENT_SCHEMA)
    return result


_JSON_TYPE = {
    bool: "boolean",
    int: "number",
    float: "number",
    list: "array",
    dict: "object",
    type(None): "null",
}


def read_jsonl_documents(path: str | Path) -> CorpusReadResult:
    """Read a JSON Lines file of documents, one object per line (BEIR's ``corpus.jsonl`` layout).

    Each object needs a ``text`` string and may carry a ``title`` and an id (``_id`` or
    ``id``). The id becomes the document's ``doc_path``, which is what labelled queries
    name (see :mod:`embed_assets.evaluation.labelled`); without one, ``line <n>`` stands in.

    Lines are skipped and counted, with their line number, when they are: not UTF-8
    (``not_utf8``, as for files: a Latin-1 line is not silently turned into U+FFFD), not JSON
    (``malformed_json``), not an object (``not_an_object``), without a ``text`` field
    (``no_text``), with a text that is not a string (``text_is_number``, ``text_is_array``,
    ...), or with an empty text (``empty``). A repeated text is one document: the later ids
    become ``aliases`` of the first (title aside: the text is what is retrieved); a repeated
    id with another text is a conflicting record, skipped as ``duplicate``.

    Raises:
        CorpusError: the file is missing, not a file, or yields no document.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus_jsonl is not a file: {path}")
    result = CorpusReadResult(documents=pl.DataFrame(schema=DOCUMENT_SCHEMA))
    rows: list[dict] = []
    seen_text: dict[str, dict] = {}  # doc_id -> its row
    seen_ref: set[str] = set()
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            result.files_seen += 1
            where = f"{path.name}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                result.skip(where, "not_utf8")
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                result.skip(where, "malformed_json")
                continue
            if not isinstance(record, dict):
                result.skip(where, "not_an_object")
                continue
            raw_id = record.get("_id", record.get("id"))
            ref = str(raw_id) if raw_id not in (None, "") else f"line {n}"
            if "text" not in record:
                result.skip(where, "no_text")
                continue
            text = record["text"]
            if not isinstance(text, str):
                result.skip(where, f"text_is_{_JSON_TYPE.get(type(text), type(text).__name__)}")
                continue
            if not text.strip():
                result.skip(where, "empty")
                continue
            text = text.strip()
            title = record.get("title")
            title = title.strip() if isinstance(title, str) else ""
            doc_id = content_hash(text)
            if ref in seen_ref or doc_id in seen_text:
                result.skip(where, "duplicate")
                if ref not in seen_ref:  # the same text under a new id: another name for it
                    seen_text[doc_id]["aliases"].append(ref)
                    seen_ref.add(ref)
                continue
            seen_ref.add(ref)
            seen_text[doc_id] = _document_row(doc_id, ref, title, text)
            rows.append(seen_text[doc_id])
    if not rows:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(result.skipped.items())) or "no lines"
        raise CorpusError(f"corpus_jsonl has no document with text: {path} (skipped: {reasons})")
    result.documents = pl.DataFrame(rows, schema=DOCUMENT_SCHEMA)
    return result


def read_lancedb_chunks(
    uri: str | Path,
    table: str,
    *,
    text_column: str = "text",
    title_column: str | None = None,
    id_column: str | None = None,
) -> CorpusReadResult:
    """Read the chunks of a production LanceDB table as documents.

    Teams that already run retrieval keep their chunks in a vector store; each row
    becomes one document (re-chunked downstream only if it is longer than the chunk
    budget). Rows with an empty or non-string text are skipped and counted; rows whose
    text repeats an earlier row are skipped as duplicates.

    Args:
        uri: LanceDB folder (or any URI ``lancedb.connect`` accepts).
        table: table name.
        text_column: column holding the chunk text.
        title_column: optional column used as the document title.
        id_column: optional column shown as the document path (``lancedb://table/<id>``).

    Raises:
        CorpusError: the table or a named column is missing, or no row has text.
    """
    import lancedb

    try:
        tbl = lancedb.connect(str(uri)).open_table(table)
    except Exception as e:  # lancedb raises ValueError/FileNotFoundError/RuntimeError by backend
        raise CorpusError(f"lancedb table {table!r} not found at {uri}: {e}") from e
    columns = set(tbl.schema.names)
    for field_name, col in (
        ("text_column", text_column),
        ("title_column", title_column),
        ("id_column", id_column),
    ):
        if col is not None and col not in columns:
            raise CorpusError(
                f"{field_name}={col!r} is not a column of lancedb table {table!r} (has: {sorted(columns)})"
            )
    wanted = [c for c in (text_column, title_column, id_column) if c]
    frame = pl.from_arrow(tbl.to_arrow().select(list(dict.fromkeys(wanted))))
    result = CorpusReadResult(documents=pl.DataFrame(schema=DOCUMENT_SCHEMA))
    rows: list[dict] = []
    seen: dict[str, dict] = {}  # doc_id -> its row
    for i, row in enumerate(frame.iter_rows(named=True)):
        result.files_seen += 1
        ref = f"lancedb://{table}/{row[id_column] if id_column else i}"
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            result.skip(ref, "empty")
            continue
        text = text.strip()
        doc_id = content_hash(text)
        if doc_id in seen:
            result.skip(ref, "duplicate")
            seen[doc_id]["aliases"].append(ref)
            continue
        title = str(row[title_column]) if title_column and row[title_column] else ""
        seen[doc_id] = _document_row(doc_id, ref, title, text)
        rows.append(seen[doc_id])
    if not rows:
        raise CorpusError(f"lancedb table {table!r} at {uri} has no row with text in {text_column!r}")
    result.documents = pl.DataFrame(rows, schema=DOCUMENT_SCHEMA)
    return result
