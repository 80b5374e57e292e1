"""A small general retrieval set that ships with Python itself, to measure forgetting.

Fine-tuning on one team's documents can make a model worse at everything else. The domain
gate cannot see that: its test queries come from the same documents. This set is built,
offline and deterministically, from the docstrings of the Python standard library: each
query is a docstring's summary line (``"Wrap a single paragraph of text, returning a list
of wrapped lines."``) and its one relevant document is the rest of that docstring, among
the bodies of a few hundred other docstrings. It is general technical English about
files, text, dates, networking, numbers and processes, in no one's domain; scoring base and
fine-tuned on it says how much general retrieval the fine-tuning cost.

The docstrings differ slightly between Python versions, so the set carries a content
:attr:`GeneralRetrievalSet.version`: numbers from different versions are not compared.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from embed_assets.evaluation.metrics import Qrels
from embed_assets.hashing import content_hash, stable_hash

# Widely used, non-GUI standard library modules. Order does not matter: docstrings are
# ordered by a hash of their qualified name below.
MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "codecs", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email.message", "enum", "filecmp", "fnmatch", "fractions", "functools",
    "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "imaplib",
    "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging", "lzma", "math",
    "mimetypes", "multiprocessing", "numbers", "operator", "os", "pathlib", "pickle", "platform",
    "pprint", "queue", "random", "re", "reprlib", "sched", "secrets", "selectors", "shlex",
    "shutil", "signal", "smtplib", "socket", "sqlite3", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time", "traceback", "typing",
    "unittest", "urllib.parse", "uuid", "warnings", "weakref", "xml.etree.ElementTree", "zipfile",
)  # fmt: skip


@dataclass(frozen=True)
class GeneralRetrievalSet:
    """``corpus`` ``{doc_id: text}``, ``queries`` ``{query_id: text}``, ``qrels`` (one relevant
    document per query) and a content ``version``."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: Qrels
    version: str


def _docstring_pairs(min_summary_words: int, min_body_chars: int, max_body_chars: int) -> dict[str, tuple]:
    pairs: dict[str, tuple[str, str]] = {}
    seen_summaries: set[str] = set()
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a Python built without e.g. sqlite3
            continue
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) != module.__name__:  # re-exported from elsewhere
                continue
            doc = inspect.getdoc(obj)
            if not doc or "\n\n" not in doc:
                continue
            head, rest = doc.split("\n\n", 1)
            summary, body = " ".join(head.split()), " ".join(rest.split())
            if len(summary.split()) < min_summary_words or len(body) < min_body_chars:
                continue
            if summary.lower() in seen_summaries:  # the same summary on several objects
                continue
            seen_summaries.add(summary.lower())
            pairs[f"{module_name}.{name}"] = (summary, body[:max_body_chars])
    return pairs


def general_retrieval_set(
    documents: int = 300,
    queries: int = 100,
    min_summary_words: int = 5,
    min_body_chars: int = 120,
    max_body_chars: int = 500,
) -> GeneralRetrievalSet:
    """Build the set: ``documents`` docstring bodies (fewer if the standard library has fewer),
    the summaries of the first ``queries`` of them as queries. Deterministic for a given
    Python: docstrings are chosen by a hash of their qualified name, not by module order."""
    if not 0 < queries <= documents:
        raise ValueError(f"need 0 < queries <= documents, got {queries} and {documents}")
    pairs = _docstring_pairs(min_summary_words, min_body_chars, max_body_chars)
    chosen = sorted(pairs, key=lambda name: content_hash(name))[:documents]
    corpus = {name: pairs[name][1] for name in chosen}
    qs = {f"q-{name}": pairs[name][0] for name in chosen[:queries]}
    qrels = {f"q-{name}": {name: 1} for name in chosen[:queries]}
    return GeneralRetrievalSet(
        corpus=corpus,
        queries=qs,
        qrels=qrels,
        version=stable_hash({"corpus": corpus, "queries": qs}, length=8),
    )
