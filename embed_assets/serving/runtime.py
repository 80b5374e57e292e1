"""Run an ``export_onnx`` folder with onnxruntime: descriptor, tokenizer and embedder, with no torch.

This module is what the server imports; it needs ``onnxruntime``, ``tokenizers`` and ``numpy`` only
(not torch, sentence-transformers or transformers: importing transformers' ``AutoTokenizer`` pulls in
torch). The export side, which does need torch, lives in ``embed_assets.export``.

Layout of an export folder::

    model.onnx                 fp32 graph: (input_ids, attention_mask[, token_type_ids]) -> sentence_embedding
    model_int8.onnx            optional dynamically quantised copy (MatMul weights, per channel)
    embed_assets_onnx.json     descriptor: input names, max_seq_length, dim, pooling, normalize, prompts, source
    tokenizer.json, ...        the (fast) tokenizer
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model_int8.onnx"
DESCRIPTOR_FILE = "embed_assets_onnx.json"
TOKENIZER_FILE = "tokenizer.json"
OUTPUT_NAME = "sentence_embedding"
TRUNCATE_MODES = ("NONE", "END")


class InputTooLongError(ValueError):
    """A text has more tokens than the model reads and the caller did not ask to truncate.

    Attributes:
        index: position of the first such text in the batch.
        n_tokens: its token count, special tokens included.
        max_tokens: the model's ``max_seq_length``.
        at_least: ``n_tokens`` counts only the start of the text (a very long one is not tokenised whole).
    """

    def __init__(self, index: int, n_tokens: int, max_tokens: int, at_least: bool = False) -> None:
        super().__init__(
            f"text {index} has {'more than ' if at_least else ''}{n_tokens} tokens; at most {max_tokens} fit"
        )
        self.index = index
        self.n_tokens = n_tokens
        self.max_tokens = max_tokens
        self.at_least = at_least


def read_descriptor(onnx_dir: Path | str) -> dict[str, Any]:
    """Load ``embed_assets_onnx.json`` from an export folder.

    Args:
        onnx_dir: folder written by ``export_onnx``.
    """
    path = Path(onnx_dir) / DESCRIPTOR_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {onnx_dir} a folder written by export_onnx?")
    return json.loads(path.read_text())


def default_providers() -> list[str]:
    """onnxruntime providers to use: CUDA first when this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class TextTokenizer:
    """The export's fast tokenizer (``tokenizer.json``), read with the ``tokenizers`` library.

    Gives the same ids as ``AutoTokenizer.from_pretrained(folder)`` (special tokens included) without
    importing transformers. Padding is done by the caller, per model batch.

    Args:
        onnx_dir: the export folder.
        max_seq_length: most tokens per text, special tokens included.
    """

    def __init__(self, onnx_dir: Path | str, max_seq_length: int) -> None:
        from tokenizers import Tokenizer

        path = Path(onnx_dir) / TOKENIZER_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: the export needs a fast tokenizer's tokenizer.json (re-export the model)"
            )
        self.max_seq_length = max_seq_length
        # Two copies: one reports over-long texts (no truncation), one cuts them at the end the way
        # sentence-transformers does (special tokens kept). A saved tokenizer.json may carry padding
        # or truncation settings of its own; neither applies here.
        self._full = Tokenizer.from_file(str(path))
        # Padded positions are masked out, so any id would do; use the tokenizer's own pad id.
        self.pad_id = int((self._full.padding or {}).get("pad_id", 0))
        self._full.no_padding()
        self._full.no_truncation()
        self._cut = Tokenizer.from_file(str(path))
        self._cut.no_padding()
        self._cut.enable_truncation(max_length=max_seq_length, direction="right")

    def encode(self, texts: Sequence[str], truncate: str = "END") -> list[list[int]]:
        """Token ids of each text, special tokens included.

        A text of more than ``64 × max_seq_length`` characters is first tokenised only up to a space
        near that length: when that start alone has ``max_seq_length + 100`` tokens or more, the text is
        over-long whatever follows, and the tokens kept by ``"END"`` all come from whole words of that
        start (words are tokenised independently), so the rest is never tokenised. This bounds the work
        a multi-megabyte input costs; otherwise (no space to cut at, or a start with few tokens) the
        whole text is tokenised.

        Args:
            texts: the strings (valid Unicode: no lone surrogates).
            truncate: ``"END"`` cuts a text to ``max_seq_length`` tokens (its end is dropped);
                ``"NONE"`` raises ``InputTooLongError`` for the first text that does not fit.
        """
        if truncate not in TRUNCATE_MODES:
            raise ValueError(f"truncate must be one of {TRUNCATE_MODES}, got {truncate!r}")
        if not texts:
            return []
        work = list(texts)
        known_long: dict[int, int] = {}  # index -> tokens in its start
        limit = 64 * self.max_seq_length
        for i, text in enumerate(work):
            if len(text) <= limit:
                continue
            cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit))
            if cut < limit // 2:
                continue
            n_start = len(self._full.encode(text[:cut]).ids)
            if n_start >= self.max_seq_length + 100:
                work[i] = text[:cut]
                known_long[i] = n_start
        tokenizer = self._cut if truncate == "END" else self._full
        ids = [e.ids for e in tokenizer.encode_batch(work)]
        if truncate == "NONE":
            for i, row in enumerate(ids):
                if i in known_long:
                    raise InputTooLongError(i, known_long[i], self.max_seq_length, at_least=True)
                if len(row) > self.max_seq_length:
                    raise InputTooLongError(i, len(row), self.max_seq_length)
        return ids


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` with every row scaled to unit length (a zero row stays zero)."""
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)


class OnnxEmbedder:
    """Sentence embeddings from an ``export_onnx`` folder with onnxruntime (no torch needed).

    Args:
        onnx_dir: folder written by ``export_onnx``.
        int8: load ``model_int8.onnx`` instead of ``model.onnx`` (must have been exported).
        providers: onnxruntime execution providers; default CUDA (when available) then CPU.
        intra_op_num_threads: threads per inference call; None lets onnxruntime decide.
        spin: let onnxruntime's threads busy-wait between calls (its default). Off, they sleep, which
            leaves the CPU to the HTTP server's event loop on a small machine.
    """

    def __init__(
        self,
        onnx_dir: Path | str,
        *,
        int8: bool = False,
        providers: Sequence[str] | None = None,
        intra_op_num_threads: int | None = None,
        spin: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.onnx_dir = Path(onnx_dir)
        self.descriptor = read_descriptor(self.onnx_dir)
        file_name = self.descriptor["int8_model_file"] if int8 else self.descriptor["model_file"]
        if not file_name or not (self.onnx_dir / file_name).exists():
            withdrawn = self.descriptor.get("int8_withdrawn") if int8 else None
            raise FileNotFoundError(
                f"{self.onnx_dir / (file_name or INT8_MODEL_FILE)} not found"
                + (
                    f" (withdrawn: {withdrawn})"
                    if withdrawn
                    else " (export with quantize_int8=True)"
                    if int8
                    else ""
                )
            )
        self.model_path = self.onnx_dir / file_name
        self.int8 = int8
        self.input_names: list[str] = list(self.descriptor["input_names"])
        self.max_seq_length: int = int(self.descriptor["max_seq_length"])
        self.dim: int = int(self.descriptor["embedding_dim"])
        self.normalize: bool = bool(self.descriptor.get("normalize", True))
        # sentence-transformers prompts (e.g. {"query": "query: "}), copied by the export; older
        # descriptors have none.
        self.prompts: dict[str, str] = dict(self.descriptor.get("prompts") or {})
        self.default_prompt_name: str | None = self.descriptor.get("default_prompt_name")
        options = ort.SessionOptions()
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = intra_op_num_threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.model_path), sess_options=options, providers=list(providers or default_providers())
        )
        self.tokenizer = TextTokenizer(self.onnx_dir, self.max_seq_length)

    def embed_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed already-tokenised texts in one onnxruntime call (right-padded to the longest).

        Args:
            ids: token ids per text, special tokens included, each at most ``max_seq_length`` long.

        Returns:
            float32 array of shape ``[len(ids), dim]``.
        """
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        width = max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self.tokenizer.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        # Single-sequence inputs: token_type_ids are all 0 for BERT-style models.
        arrays = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        feeds = {name: arrays[name] for name in self.input_names}
        return self.session.run([OUTPUT_NAME], feeds)[0].astype(np.float32, copy=False)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed texts.

        Args:
            texts: the strings to embed; each is truncated to ``max_seq_length`` tokens.
            batch_size: texts per onnxruntime call.

        Returns:
            float32 array of shape ``[len(texts), dim]`` (unit norm when the model normalises).
        """
        return self.encode_with_usage(texts, batch_size=batch_size)[0]

    def encode_with_usage(self, texts: list[str], batch_size: int = 32) -> tuple[np.ndarray, int]:
        """Like ``encode`` but also returns the number of tokens fed to the model (after truncation).

        Args:
            texts: the strings to embed.
            batch_size: texts per onnxruntime call.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out, 0
        ids = self.tokenizer.encode(texts, truncate="END")
        for idx in length_batches(ids, batch_size):
            out[idx] = self.embed_ids([ids[i] for i in idx])
        return out, sum(len(row) for row in ids)


def length_batches(ids: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """The model batches :meth:`OnnxEmbedder.encode` makes of tokenised texts, as row numbers:
    texts of similar length together, so that little compute goes to padding. A caller that
    spreads the batches over workers gets the same vectors, since each batch is padded alike."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
