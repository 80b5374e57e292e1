"""Corpus encoding fanned out over Ray (``$EMBED_ASSETS_RAY_ADDRESS``), on a local Ray instance that
this module starts (``local``: inside the test process, 2 CPUs here) and shuts down: the same vectors
bit for bit as in one process, through the encoder and through a real materialization of the chunk
index, and a setting that cannot work fails the run before any work, naming it.

Skipped only where Ray is not installed and ``CI`` is unset; in CI it always runs.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time

import dagster as dg
import lancedb
import numpy as np
import pytest

from embed_assets.defs.definitions import all_assets, build_resources
from embed_assets.export.onnx_encoder import corpus_encoder
from embed_assets.export.ray_fanout import (
    INSTALL_HINT,
    RAY_ADDRESS_ENV,
    RAY_WORKERS_ENV,
    RaySettingError,
    check_ray_setting,
)
from embed_assets.models import resolve_model_path

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None and not os.environ.get("CI"),
    reason=f"the Ray tests need the ray package ({INSTALL_HINT}); runs in CI",
)

SELECTION = ["source_documents", "document_chunks", "base_chunk_index"]


@pytest.fixture(scope="module")
def local_ray():
    """``local``: the first encoder that fans out starts a Ray instance in this process; it is
    shut down when the module's tests are done."""
    yield "local"
    import ray

    ray.shutdown()


def test_ray_workers_give_the_in_process_vectors(base_model, mini_chunks, local_ray, tmp_path, monkeypatch):
    path, texts = resolve_model_path("all-MiniLM-L6-v2"), mini_chunks["text"].to_list()
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    alone = corpus_encoder(base_model, path, tmp_path / "export", device="cpu")
    expected = alone.encode(texts)

    monkeypatch.setenv(RAY_ADDRESS_ENV, local_ray)
    monkeypatch.setenv(RAY_WORKERS_ENV, "2")
    fanned = corpus_encoder(base_model, path, tmp_path / "export", device="cpu")
    assert fanned.metadata()["encoder_fanout"] == "ray at local, 2 workers"
    # Each batch is the in-process one, padded alike: equal bit for bit, not merely close.
    assert np.array_equal(fanned.encode(texts), expected)
    assert np.array_equal(fanned.encode(texts[::-1]), expected[::-1])  # other batches, same rows
    assert fanned.encode([]).shape == (0, expected.shape[1])


def test_no_ray_import_when_unset():
    code = (
        "import sys; from embed_assets.export.onnx_encoder import corpus_encoder; "
        "from embed_assets.export.ray_fanout import check_ray_setting; check_ray_setting(); "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    env = {k: v for k, v in os.environ.items() if k != RAY_ADDRESS_ENV}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def _index(home, corpus, instance) -> tuple[str, dict[str, list[float]], dict]:
    """Materialize the chunk index in ``home``: its data version, vectors by chunk id, metadata."""
    result = dg.materialize(
        all_assets,
        selection=SELECTION,
        run_config={"ops": {"source_documents": {"config": {"corpus_dir": str(corpus)}}}},
        resources=build_resources(str(home)),
        instance=instance,
    )
    assert result.success
    mat = next(
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("base_chunk_index")
    )
    value = result.output_for_node("base_chunk_index")
    rows = lancedb.connect(value["uri"]).open_table(value["table"]).to_arrow()
    vectors = dict(zip(rows["chunk_id"].to_pylist(), rows["vector"].to_pylist(), strict=True))
    return mat.tags["dagster/data_version"], vectors, {k: v.value for k, v in mat.metadata.items()}


def test_the_index_asset_on_ray_equals_the_one_in_process(mini_corpus_dir, local_ray, tmp_path, monkeypatch):
    instance = dg.DagsterInstance.ephemeral()
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    version, vectors, metadata = _index(tmp_path / "alone", mini_corpus_dir, instance)
    monkeypatch.setenv(RAY_ADDRESS_ENV, local_ray)
    ray_version, ray_vectors, ray_metadata = _index(tmp_path / "ray", mini_corpus_dir, instance)

    assert ray_version == version
    assert ray_vectors == vectors  # the same chunk ids with float32 vectors equal bit for bit
    assert "encoder_fanout" not in metadata and ray_metadata["encoder_fanout"].startswith("ray at local")
    assert ray_metadata["embeddings_computed"] == metadata["embeddings_computed"] == len(vectors)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "name, value, says",
    [
        (RAY_ADDRESS_ENV, "127.0.0.1:{port}", "no Ray cluster answers"),
        (RAY_ADDRESS_ENV, "ray://127.0.0.1:{port}", "no Ray cluster answers"),
        (RAY_ADDRESS_ENV, "head-node", "expected local, auto, host:port or ray://host:port"),
        (RAY_WORKERS_ENV, "none", "expected a positive number of Ray workers"),
    ],
)
def test_a_setting_that_cannot_work_fails_naming_it(name, value, says, monkeypatch):
    monkeypatch.setenv(RAY_ADDRESS_ENV, "local")
    monkeypatch.setenv(name, value.format(port=_closed_port()))
    start = time.monotonic()
    with pytest.raises(RaySettingError, match=f"\\${name}=.*{says}"):
        check_ray_setting()
    assert time.monotonic() - start < 10  # not ray.init's minutes of retries


def test_an_unreachable_address_fails_the_run_at_its_first_step(mini_corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(RAY_ADDRESS_ENV, f"127.0.0.1:{_closed_port()}")
    result = dg.materialize(
        all_assets,
        selection=SELECTION,
        run_config={"ops": {"source_documents": {"config": {"corpus_dir": str(mini_corpus_dir)}}}},
        resources=build_resources(str(tmp_path / "home")),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success and not result.get_asset_materialization_events()
    errors = [str(e.event_specific_data.error) for e in result.all_events if e.is_failure]
    assert any(f"${RAY_ADDRESS_ENV}=" in e and "no Ray cluster answers" in e for e in errors), errors
