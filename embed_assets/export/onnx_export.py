"""Export a sentence-transformers bi-encoder to ONNX and check parity with PyTorch.

The exported graph is the whole encoder, not just the transformer: token embeddings,
pooling (mean or CLS, as configured in the model's ``Pooling`` module) and L2
normalisation (when the model has a ``Normalize`` module) all happen inside ONNX, so
a consumer only needs the tokenizer and one ``session.run`` to get the same vectors
as ``SentenceTransformer.encode``. Running an export needs no torch: see
``embed_assets.serving.runtime`` (``OnnxEmbedder``), which this module uses for its checks.

Layout of an export folder::

    model.onnx                 fp32 graph: (input_ids, attention_mask[, token_type_ids]) -> sentence_embedding
    model_int8.onnx            optional dynamically quantised copy (MatMul weights, per channel)
    embed_assets_onnx.json     descriptor: input names, max_seq_length, dim, pooling, normalize, prompts, source
    tokenizer.json, ...        the tokenizer, loadable with ``AutoTokenizer.from_pretrained(folder)``
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embed_assets.serving.runtime import (
    DESCRIPTOR_FILE,
    INT8_MODEL_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    OnnxEmbedder,
    read_descriptor,
    unit_rows,
)

DESCRIPTOR_VERSION = 1
SUPPORTED_POOLING = ("mean", "cls")


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote.

    Attributes:
        out_dir: the export folder.
        model_path: the fp32 ONNX graph.
        int8_model_path: the quantised graph, or None when not requested.
        descriptor_path: the ``embed_assets_onnx.json`` descriptor.
        input_names: graph inputs, in order (``token_type_ids`` only if the tokenizer makes them).
        output_names: graph outputs (``["sentence_embedding"]``).
        embedding_dim: width of the sentence embedding.
        max_seq_length: tokens kept per text; longer texts are truncated.
        pooling: ``"mean"`` or ``"cls"``.
        normalize: whether the graph L2-normalises its output.
        opset: ONNX opset used.
        model_bytes: size of ``model.onnx``.
        int8_model_bytes: size of ``model_int8.onnx``, or None.
    """

    out_dir: Path
    model_path: Path
    int8_model_path: Path | None
    descriptor_path: Path
    input_names: list[str]
    output_names: list[str]
    embedding_dim: int
    max_seq_length: int
    pooling: str
    normalize: bool
    opset: int
    model_bytes: int
    int8_model_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (paths as strings), e.g. for asset metadata."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ParityReport:
    """Per-text cosine between sentence-transformers and ONNX embeddings.

    Attributes:
        n: number of texts compared.
        min_cosine: worst cosine over the texts.
        mean_cosine: average cosine.
        passed: ``min_cosine >= threshold``.
        threshold: the ``min_cosine`` that was required.
    """

    n: int
    min_cosine: float
    mean_cosine: float
    passed: bool
    threshold: float


class _SentenceEncoder(torch.nn.Module):
    """Transformer + pooling + optional L2 normalisation as one traceable module."""

    def __init__(self, transformer: torch.nn.Module, pooling: str, normalize: bool, use_token_type_ids: bool):
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling
        self.normalize = normalize
        self.use_token_type_ids = use_token_type_ids

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        tokens = self.transformer(**kwargs).last_hidden_state
        if self.pooling == "cls":
            emb = tokens[:, 0]
        else:
            # Same formula as sentence-transformers' Pooling: padded positions contribute nothing.
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            emb = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        return emb


def _pooling_mode(pooling_module: torch.nn.Module) -> str:
    """Read the pooling mode from a sentence-transformers Pooling module (v6 and older APIs)."""
    mode = getattr(pooling_module, "pooling_mode", None)
    if mode is None and hasattr(pooling_module, "get_pooling_mode_str"):
        mode = pooling_module.get_pooling_mode_str()
    if isinstance(mode, (list, tuple)):
        mode = mode[0] if len(mode) == 1 else "+".join(mode)
    mode = {"mean_tokens": "mean", "cls_token": "cls"}.get(mode, mode)
    if mode not in SUPPORTED_POOLING:
        raise ValueError(
            f"pooling mode {mode!r} is not supported for ONNX export (supported: {SUPPORTED_POOLING})"
        )
    return mode


def _load_sentence_transformer(model_dir: Path | str, device: str = "cpu"):
    from sentence_transformers import SentenceTransformer

    from embed_assets.models import resolve_model_path

    return SentenceTransformer(resolve_model_path(str(model_dir), field_name="model_dir"), device=device)


def _build_encoder(st_model) -> tuple[_SentenceEncoder, Any, str, bool, int, int]:
    """Split a SentenceTransformer into (encoder module, tokenizer, pooling, normalize, dim, max_len)."""
    modules = list(st_model)
    if len(modules) < 2:
        raise ValueError(
            "expected at least a Transformer and a Pooling module in the sentence-transformers model"
        )
    transformer_module, pooling_module, rest = modules[0], modules[1], modules[2:]
    if type(pooling_module).__name__ != "Pooling":
        raise ValueError(f"second module must be Pooling, got {type(pooling_module).__name__}")
    unsupported = [type(m).__name__ for m in rest if type(m).__name__ != "Normalize"]
    if unsupported:
        raise ValueError(f"modules after Pooling other than Normalize are not supported: {unsupported}")
    normalize = bool(rest)
    pooling = _pooling_mode(pooling_module)
    tokenizer = transformer_module.tokenizer
    hf_model = transformer_module.auto_model
    # Export in fp32 whatever dtype the checkpoint was saved in; CPU onnxruntime wants fp32.
    hf_model = hf_model.to(device="cpu", dtype=torch.float32).eval()
    use_tti = "token_type_ids" in tokenizer.model_input_names
    # sentence-transformers 6 renamed get_sentence_embedding_dimension; accept both.
    get_dim = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
    dim = int(get_dim())
    max_len = int(st_model.max_seq_length)
    return (
        _SentenceEncoder(hf_model, pooling, normalize, use_tti).eval(),
        tokenizer,
        pooling,
        normalize,
        dim,
        max_len,
    )


def _trace(
    encoder: _SentenceEncoder,
    tokenizer,
    input_names: list[str],
    path: Path,
    opset: int,
    *,
    eager_attention: bool,
) -> None:
    """Trace ``encoder`` to an ONNX graph at ``path`` with dynamic batch and sequence axes."""
    # The dummy batch must contain padding: the tracer records one branch of the attention-mask
    # code, and an unpadded example could record the "no mask needed" shortcut.
    dummy = tokenizer(
        ["an example sentence to trace the graph with", "short"], padding=True, return_tensors="pt"
    )
    args = tuple(dummy[name] for name in input_names)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    dynamic_axes[OUTPUT_NAME] = {0: "batch"}
    if eager_attention:
        # The eager attention code traces to the MatMul/Softmax pattern the optimizer fuses into one
        # Attention kernel; the SDPA path traces to one it does not recognise.
        _use_eager_attention(encoder.transformer)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated but still the most robust path for BERT-style
        # encoders, and needs no onnxscript; silence its deprecation and tracer chatter.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            args,
            str(path),
            input_names=input_names,
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_onnx(
    model_dir: Path | str,
    out_dir: Path | str,
    *,
    opset: int = 17,
    quantize_int8: bool = False,
    optimize: bool = True,
) -> OnnxExport:
    """Export a sentence-transformers model folder to ``out_dir`` as a single ONNX graph.

    Args:
        model_dir: sentence-transformers model folder (or the embedded alias ``all-MiniLM-L6-v2``).
        out_dir: folder to write ``model.onnx``, the tokenizer and the descriptor into (created).
        opset: ONNX opset version for the exporter.
        quantize_int8: also write ``model_int8.onnx`` (onnxruntime dynamic quantisation of the
            MatMul weights, per channel): smaller and faster on CPU, slightly less exact.
        optimize: fuse the transformer's operators in ``model.onnx`` (attention, embedding and skip
            layer norms, bias + GELU) with onnxruntime's transformer optimizer, for fewer, faster kernels;
            a graph it cannot fuse is kept as exported. The int8 model is quantised from the unfused graph.

    Returns:
        An ``OnnxExport`` describing the written files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    st_model = _load_sentence_transformer(model_dir)
    encoder, tokenizer, pooling, normalize, dim, max_len = _build_encoder(st_model)
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if encoder.use_token_type_ids else [])
    model_path = out_dir / MODEL_FILE
    raw_path = out_dir / "model.unfused.onnx"
    _trace(encoder, tokenizer, input_names, raw_path, opset, eager_attention=optimize)

    int8_path: Path | None = out_dir / INT8_MODEL_FILE
    if quantize_int8:
        # From the unfused graph: the quantiser cannot type the fused operators' tensors, and the
        # fused int8 graph measured no faster (onnxruntime fuses the quantised graph itself).
        quantize_onnx_int8(raw_path, int8_path)
    else:
        # A stale quantised file from an earlier export would silently serve an old model.
        int8_path.unlink(missing_ok=True)
        int8_path = None
    fused = _fuse_transformer(raw_path, model_path, encoder.transformer.config) if optimize else None
    if fused is None:
        raw_path.replace(model_path)
    else:
        raw_path.unlink()

    tokenizer.save_pretrained(str(out_dir))
    descriptor = {
        "format_version": DESCRIPTOR_VERSION,
        "model_file": MODEL_FILE,
        "int8_model_file": INT8_MODEL_FILE if int8_path else None,
        "input_names": input_names,
        "output_name": OUTPUT_NAME,
        "embedding_dim": dim,
        "max_seq_length": max_len,
        "pooling": pooling,
        "normalize": normalize,
        "opset": opset,
        "fused_operators": fused,
        "source_model_dir": _source_dir(model_dir),
        **_prompt_fields(st_model),
    }
    descriptor_path = out_dir / DESCRIPTOR_FILE
    descriptor_path.write_text(json.dumps(descriptor, indent=2) + "\n")
    return OnnxExport(
        out_dir=out_dir,
        model_path=model_path,
        int8_model_path=int8_path,
        descriptor_path=descriptor_path,
        input_names=input_names,
        output_names=[OUTPUT_NAME],
        embedding_dim=dim,
        max_seq_length=max_len,
        pooling=pooling,
        normalize=normalize,
        opset=opset,
        model_bytes=model_path.stat().st_size,
        int8_model_bytes=int8_path.stat().st_size if int8_path else None,
    )


def _use_eager_attention(hf_model: torch.nn.Module) -> None:
    """Switch a transformers model to its eager attention code (same result, a fusable graph)."""
    if hasattr(hf_model, "set_attn_implementation"):
        try:
            hf_model.set_attn_implementation("eager")
            return
        except (ValueError, NotImplementedError):
            pass
    hf_model.config._attn_implementation = "eager"


def _fuse_transformer(raw_path: Path, out_path: Path, config) -> dict[str, int] | None:
    """Fuse a BERT-style encoder graph with onnxruntime's transformer optimizer into ``out_path``.

    Returns:
        The count of each fused operator, or None (nothing written) when the optimizer failed or
        fused nothing, e.g. for an architecture it does not know.
    """
    num_heads = getattr(config, "num_attention_heads", None)
    hidden_size = getattr(config, "hidden_size", None)
    if not num_heads or not hidden_size:
        return None
    from onnxruntime.transformers.optimizer import optimize_model

    transformers_log = logging.getLogger("onnxruntime.transformers")
    level = transformers_log.level
    transformers_log.setLevel(logging.WARNING)  # it logs every fusion pass at INFO
    try:
        optimized = optimize_model(
            str(raw_path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=1
        )
        fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        if not fused:
            return None
        optimized.save_model_to_file(str(out_path))
        return fused
    except Exception as exc:  # an architecture the optimizer trips on: keep the exported graph
        logging.getLogger(__name__).warning("graph fusion skipped: %s", exc)
        return None
    finally:
        transformers_log.setLevel(level)


def _prompt_fields(st_model) -> dict[str, Any]:
    """The model's sentence-transformers prompts (``config_sentence_transformers.json``), for the server.

    Empty prompts are dropped (sentence-transformers gives every model ``{"query": "", "document": ""}``).
    A model whose Pooling leaves the prompt tokens out (``include_prompt=False``) cannot be served with
    prompts by a graph that pools every token, so its prompts are not exported.
    """
    prompts = {k: v for k, v in (getattr(st_model, "prompts", None) or {}).items() if v}
    if prompts and getattr(list(st_model)[1], "include_prompt", True) is False:
        logging.getLogger(__name__).warning(
            "the model's Pooling excludes prompt tokens; its prompts %s are not exported", sorted(prompts)
        )
        prompts = {}
    default = getattr(st_model, "default_prompt_name", None)
    return {"prompts": prompts, "default_prompt_name": default if default in prompts else None}


def withdraw_int8(onnx_dir: Path | str, reason: str) -> None:
    """Remove ``model_int8.onnx`` from an export and record why in the descriptor.

    Used when the quantised model fails its retrieval check: it can then not be served by mistake
    (``OnnxEmbedder(..., int8=True)`` and ``--int8`` fail naming ``reason``); the fp32 model stays.

    Args:
        onnx_dir: the export folder.
        reason: why, for whoever tries to load it.
    """
    onnx_dir = Path(onnx_dir)
    descriptor = read_descriptor(onnx_dir)
    (onnx_dir / INT8_MODEL_FILE).unlink(missing_ok=True)
    descriptor["int8_model_file"] = None
    descriptor["int8_withdrawn"] = reason
    (onnx_dir / DESCRIPTOR_FILE).write_text(json.dumps(descriptor, indent=2) + "\n")


def _source_dir(model_dir: Path | str) -> str:
    from embed_assets.models import resolve_model_path

    resolved = resolve_model_path(str(model_dir), field_name="model_dir")
    path = Path(resolved)
    return str(path.resolve()) if path.exists() else resolved


def quantize_onnx_int8(model_path: Path | str, out_path: Path | str) -> Path:
    """Dynamically quantise an ONNX graph's MatMul weights to int8, per output channel.

    Args:
        model_path: fp32 ONNX file.
        out_path: where to write the quantised file.

    Returns:
        ``out_path``. Only MatMul is quantised: quantising Gather (embeddings) or Add costs
        accuracy for almost no speed.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime logs a "consider pre-processing" hint on the root logger; its pre-processing
    # (symbolic shape inference) fails on this graph, so the hint is only noise here.
    hint_filter = _DropMessage("pre-processing before quantization")
    root = logging.getLogger()
    root.addFilter(hint_filter)
    try:
        quantize_dynamic(
            str(model_path),
            str(out_path),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
        )
    finally:
        root.removeFilter(hint_filter)
    return Path(out_path)


class _DropMessage(logging.Filter):
    """Logging filter that drops records containing a given substring."""

    def __init__(self, substring: str) -> None:
        super().__init__()
        self.substring = substring

    def filter(self, record: logging.LogRecord) -> bool:
        return self.substring not in record.getMessage()


def check_parity(
    model_dir: Path | str,
    onnx_dir: Path | str,
    texts: list[str],
    *,
    min_cosine: float = 0.999,
    int8: bool = False,
    batch_size: int = 32,
) -> ParityReport:
    """Compare sentence-transformers and ONNX embeddings text by text.

    Args:
        model_dir: the sentence-transformers model that was exported.
        onnx_dir: the export folder.
        texts: texts to embed with both (include long ones to exercise truncation).
        min_cosine: the worst per-text cosine that still passes.
        int8: compare against ``model_int8.onnx`` instead of ``model.onnx``.
        batch_size: batch size for both encoders.
    """
    if not texts:
        raise ValueError("texts: need at least one text to check parity")
    st_model = _load_sentence_transformer(model_dir)
    ref = st_model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    ).astype(np.float32)
    got = OnnxEmbedder(onnx_dir, int8=int8).encode(list(texts), batch_size=batch_size)
    # Normalise the ONNX side too, so the check also works for models without a Normalize module.
    got = unit_rows(got)
    cos = (ref * got).sum(axis=1)
    worst = float(cos.min())
    return ParityReport(
        n=len(texts),
        min_cosine=worst,
        mean_cosine=float(cos.mean()),
        passed=worst >= min_cosine,
        threshold=min_cosine,
    )
