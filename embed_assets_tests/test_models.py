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
