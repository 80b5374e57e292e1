"""Bulk encoding with onnxruntime (``corpus_encoder``) and its PyTorch fallbacks, on the real
embedded all-MiniLM-L6-v2 and a real LanceDB embedding cache."""

from __future__ import annotations

import numpy as np

from embed_assets.export.onnx_encoder import corpus_encoder
from embed_assets.index.chunk_index import EmbeddingCache
from embed_assets.models import encode, resolve_model_path

TEXTS = [
    "SQLSTATE 40P01: deadlock detected",
    "work_mem sets the memory of each sort before it spills to disk",
    "wal_level",
    "checkpoint_timeout " * 300,  # truncated at the model's 256 tokens, as PyTorch truncates
]


def test_onnxruntime_gives_pytorchs_vectors_and_reuses_its_export(base_model, tmp_path):
    path = resolve_model_path("all-MiniLM-L6-v2")
    encoder = corpus_encoder(base_model, path, tmp_path / "export", device="cpu")
    assert encoder.runtime == "onnxruntime" and not encoder.reason
    vectors = encoder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, encode(base_model, TEXTS), atol=1e-5)
    assert encoder.metadata() == {
        "encoder_runtime": "onnxruntime",
        "encoder_export_dir": str(tmp_path / "export"),
    }

    graph = tmp_path / "export" / "model.onnx"
    written = graph.stat().st_mtime_ns
    again = corpus_encoder(base_model, path, tmp_path / "export", device="cpu")
    assert again.runtime == "onnxruntime"
    assert graph.stat().st_mtime_ns == written  # the export is reused, not redone
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folder is left


def test_a_damaged_export_is_exported_again(base_model, tmp_path):
    path = resolve_model_path("all-MiniLM-L6-v2")
    corpus_encoder(base_model, path, tmp_path / "export", device="cpu")
    (tmp_path / "export" / "model.onnx").write_bytes(b"cut short")
    encoder = corpus_encoder(base_model, path, tmp_path / "export", device="cpu")
    assert encoder.runtime == "onnxruntime"
    np.testing.assert_allclose(encoder.encode(TEXTS[:2]), encode(base_model, TEXTS[:2]), atol=1e-5)


def test_pytorch_is_kept_with_its_reason(base_model, tmp_path):
    path = resolve_model_path("all-MiniLM-L6-v2")
    on_gpu = corpus_encoder(base_model, path, tmp_path / "a", device="cuda")
    assert on_gpu.runtime == "torch" and "GPU" in on_gpu.reason and not (tmp_path / "a").exists()
    hub_id = corpus_encoder(base_model, "someone/model", tmp_path / "b", device="cpu")
    assert hub_id.runtime == "torch" and "not a local model folder" in hub_id.reason
    strict = corpus_encoder(base_model, path, tmp_path / "c", device="cpu", min_cosine=1.01)
    assert strict.runtime == "torch" and "disagrees with PyTorch" in strict.reason
    assert strict.metadata()["encoder_fallback_reason"] == strict.reason
    np.testing.assert_array_equal(strict.encode(TEXTS), encode(base_model, TEXTS))


def test_the_embedding_cache_sends_only_unknown_texts_to_its_encoder(base_model, tmp_path):
    path = resolve_model_path("all-MiniLM-L6-v2")
    onnx = corpus_encoder(base_model, path, tmp_path / "export", device="cpu")
    seen: list[str] = []

    def counting(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return onnx.encode(texts)

    cache = EmbeddingCache(tmp_path / "lancedb", "key", 384, counting)
    first = cache.text_vectors(TEXTS[:3], base_model)
    assert seen == TEXTS[:3]
    second = cache.text_vectors(TEXTS[1:], base_model)
    assert seen == TEXTS[:3] + [TEXTS[3]]  # the known ones are read back, not encoded
    np.testing.assert_array_equal(second[:2], first[1:])
    assert (cache.computed, cache.reused) == (4, 2)
