"""Token-aware chunking with overlap.

Chunks are measured in the base model's own tokens, so a chunk never silently
exceeds what the encoder reads. Cuts prefer paragraph breaks, then line or
sentence ends, so a chunk rarely stops mid-sentence. Each chunk is prefixed
with its document title (a "contextual chunk header"): a section taken out of a
long manual page otherwise loses the name of the setting it documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from transformers import PreTrainedTokenizerBase

from embed_assets.hashing import content_hash

CHUNK_SCHEMA = {
    "chunk_id": pl.String,
    "doc_id": pl.String,
    "doc_path": pl.String,
    "chunk_index": pl.Int32,
    "title": pl.String,
    "text": pl.String,
    "n_tokens": pl.Int32,
}


@dataclass(frozen=True)
class ChunkingConfig:
    """Args:
    chunk_tokens: target chunk length in tokens, title header included. 128 matches
        the sequence length all-MiniLM-L6-v2 was trained with.
    overlap_tokens: tokens shared by consecutive chunks, so a fact on a boundary is
        whole in at least one chunk.
    min_chunk_tokens: a trailing chunk shorter than this is dropped when the
        previous chunk already overlaps it (it would only repeat text).
    add_title: prefix each chunk with the document title.
    """

    chunk_tokens: int = 128
    overlap_tokens: int = 24
    min_chunk_tokens: int = 16
    add_title: bool = True

    def __post_init__(self) -> None:
        if self.chunk_tokens < 16:
            raise ValueError(f"chunk_tokens must be >= 16, got {self.chunk_tokens}")
        if not 0 <= self.overlap_tokens < self.chunk_tokens // 2:
            raise ValueError(
                f"overlap_tokens must be in [0, chunk_tokens/2), got {self.overlap_tokens} "
                f"for chunk_tokens={self.chunk_tokens}"
            )


def _break_score(text: str, char_pos: int) -> int:
    """How good a cut just before ``char_pos`` is: 3 paragraph, 2 line, 1 sentence, 0 none."""
    before = text[max(0, char_pos - 2) : char_pos]
    if before.endswith("\n\n") or text.startswith("\n\n", char_pos):
        return 3
    if before.endswith("\n") or text.startswith("\n", char_pos):
        return 2
    if before.rstrip().endswith((".", "!", "?", ":", ";")):
        return 1
    return 0


def _word_start(text: str, char_pos: int) -> bool:
    return char_pos == 0 or not (text[char_pos - 1].isalnum() and text[char_pos].isalnum())


def split_text(text: str, tokenizer: PreTrainedTokenizerBase, budget: int, overlap: int, min_tokens: int):
    """Yield ``(start_char, end_char, n_tokens)`` windows of at most ``budget`` tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = enc["offset_mapping"]
    n = len(offsets)
    if n == 0:
        return
    starts = [s for s, _ in offsets]
    start = 0
    while start < n:
        end = min(start + budget, n)
        if end < n:
            # Look back over the last 40% of the window for the best natural break.
            lo = start + max(1, int(budget * 0.6))
            best, best_score = end, -1
            for t in range(end, lo - 1, -1):
                score = _break_score(text, starts[t])
                if score > best_score:
                    best, best_score = t, score
                    if score == 3:
                        break
            end = best
        yield offsets[start][0], offsets[end - 1][1], end - start
        if end >= n:
            break
        next_start = max(end - overlap, start + 1)
        # Never start inside a word: a continuation word-piece would re-tokenise differently.
        while next_start > start + 1 and not _word_start(text, starts[next_start]):
            next_start -= 1
        if n - next_start <= overlap + min_tokens and n - end < min_tokens:
            break  # the tail is already covered by the overlap
        start = next_start


def chunk_documents(
    documents: pl.DataFrame, tokenizer: PreTrainedTokenizerBase, config: ChunkingConfig | None = None
) -> pl.DataFrame:
    """Cut every document into token-bounded chunks.

    Args:
        documents: frame with ``doc_id, doc_path, title, text`` (see ``read_corpus``).
        tokenizer: the base model's tokenizer; lengths are counted in its tokens.
        config: chunk size, overlap and title header settings.

    Returns:
        A frame with ``CHUNK_SCHEMA``. ``chunk_id`` is the content hash of the chunk
        text; chunks whose text repeats an earlier chunk are dropped (boilerplate).
    """
    config = config or ChunkingConfig()
    rows: list[dict] = []
    seen: set[str] = set()
    for doc in documents.iter_rows(named=True):
        header = f"{doc['title']}\n\n" if config.add_title and doc["title"] else ""
        if header:
            enc = tokenizer(header, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            if len(enc["input_ids"]) > config.chunk_tokens // 4:
                # A very long title would crowd out the body: keep its first quarter-chunk of tokens.
                cut = enc["offset_mapping"][config.chunk_tokens // 4 - 1][1]
                header = header[:cut].rstrip() + "\n\n"
        header_tokens = len(tokenizer(header, add_special_tokens=False)["input_ids"]) if header else 0
        budget = config.chunk_tokens - header_tokens
        body = doc["text"]
        index = 0
        for s, e, n_tok in split_text(
            body, tokenizer, budget, config.overlap_tokens, config.min_chunk_tokens
        ):
            piece = body[s:e].strip()
            if not piece:
                continue
            text = piece if piece.startswith(header.strip()) and header else header + piece
            chunk_id = content_hash(text)
            if chunk_id in seen:
                continue
            seen.add(chunk_id)
            rows.append(
                {
                    "chunk_id": chunk_id,
                    "doc_id": doc["doc_id"],
                    "doc_path": doc["doc_path"],
                    "chunk_index": index,
                    "title": doc["title"],
                    "text": text,
                    "n_tokens": n_tok + header_tokens,
                }
            )
            index += 1
    return pl.DataFrame(rows, schema=CHUNK_SCHEMA)


__all__ = ["CHUNK_SCHEMA", "ChunkingConfig", "chunk_documents", "split_text"]
