"""Content hashes used as stable ids for documents, chunks and questions."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_hash(text: str, length: int = 16) -> str:
    """Return the first ``length`` hex digits of the SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash any JSON-serialisable object independently of dict key order."""
    return content_hash(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str), length)
