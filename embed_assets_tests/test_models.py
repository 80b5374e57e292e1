"""Resolving model names offline, and encoding with the embedded all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embed_assets.models import ModelNotFoundError, encode, resolve_model_path


@pytest.mark.parametrize(
    "alias", ["all-MiniLM-L6-v2", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"]
)
def test_alias_resolves_to_existing_model_folder(alias):
    path = Path(resolve_model_path(alias))
    assert path.is_dir()
    assert (path / "config.json").exists() or (path / "modules.json").exists()


def test_existing_model_folder_is_returned_as_is():
    folder = resolve_model_path("all-MiniLM-L6-v2")
    assert resolve_model_path(folder) == folder


def test_missing_path_raises_naming_field_and_path():
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path("/nope/model", field_name="finetuned_model.base_model")
    msg = str(exc.value)
    assert "finetuned_model.base_model" in msg
    assert "/nope/model" in msg


def test_relative_missing_path_raises():
    with pytest.raises(ModelNotFoundError, match="base_model"):
        resolve_model_path("./models/nothing-here")


def test_folder_that_is_not_a_model_raises(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a sentence-transformers") as exc:
        resolve_model_path(str(tmp_path))
    assert str(tmp_path) in str(exc.value)


def test_unknown_hub_id_offline_raises(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path("someone/unknown-model", field_name="base_model")
    msg = str(exc.value)
    assert "base_model" in msg and "someone/unknown-model" in msg and "HF_HUB_OFFLINE" in msg


def test_unknown_hub_id_online_is_passed_through(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_model_path("someone/unknown-model") == "someone/unknown-model"


def test_encode_is_unit_normalised_float32(base_model):
    vecs = encode(base_model, ["work_mem sets memory per sort", "wal_level controls WAL detail"])
    assert vecs.dtype == np.float32
    assert vecs.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # Related texts score higher than unrelated ones.
    q = encode(base_model, ["memory used by sorts"])[0]
    assert q @ vecs[0] > q @ vecs[1]


def test_encode_empty_list(base_model):
    out = encode(base_model, [])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_model_key_follows_the_files_contents_through_its_memo(tmp_path):
    """The key is memoised per folder and file stats, so a rewrite of the weights (even to the
    same size) must give a new key, and a copy of the files in another folder the same key."""
    import os
    import shutil

    from embed_assets.index.chunk_index import model_key

    folder = tmp_path / "model"
    shutil.copytree(resolve_model_path("all-MiniLM-L6-v2"), folder)
    first = model_key(folder)
    assert model_key(folder) == first
    shutil.copytree(folder, tmp_path / "copy")
    assert model_key(tmp_path / "copy") == first

    config = folder / "config.json"
    before = config.stat()
    text = config.read_text()
    config.write_text(text.replace('"hidden_act"', '"hidden_ACT"'))  # same size, other bytes
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # a later write
    assert config.stat().st_size == before.st_size
    assert model_key(folder) != first


def test_the_encode_batch_size_does_not_change_the_vectors(base_model):
    """The product encodes with ENCODE_BATCH_SIZE (chosen for speed, benchmarks/bench_encode_batch.py);
    vectors must agree with other batch sizes up to float rounding, so caches filled at another
    size stay valid."""
    from embed_assets.models import ENCODE_BATCH_SIZE

    texts = [f"SQLSTATE {n}: deadlock detected on relation {n * 7}" for n in range(40)] + ["work_mem"]
    ours = encode(base_model, texts)
    for other in (1, 4 * ENCODE_BATCH_SIZE):
        np.testing.assert_allclose(encode(base_model, texts, batch_size=other), ours, atol=1e-5)
