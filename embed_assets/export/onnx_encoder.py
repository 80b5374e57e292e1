"""Bulk encoding with onnxruntime: the pipeline's corpus and question vectors on CPU.

On CPU the fused fp32 graph that :func:`~embed_assets.export.onnx_export.export_onnx` writes
(the one the server runs) encodes the default corpus's chunks 1.37x faster than PyTorch at the
same batch size, with vectors equal to 2.5e-7 (``benchmarks/bench_encode_batch.py --onnx``,
``benchmarks/results/encode-batch.md``). The stages that embed a whole corpus (the chunk index,
the evaluation) and the questions (quality filter, miner, evaluation) encode with it; training
and validation during training stay in PyTorch, whose model is the one being changed.

The export is kept in a folder the caller names (the pipeline keeps them under ``encoders/``
in the artifact store: a cache that ``embed-assets gc`` may delete and a run rebuilds in seconds),
and a rerun reuses it. A GPU keeps PyTorch (faster there, and this is measured on CPU only); a model
that cannot be exported, or whose export disagrees with PyTorch, keeps PyTorch too, and the
reason is returned for the stage's metadata.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed_assets.export.ray_fanout import RayTextEncoder, ray_settings
from embed_assets.models import ENCODE_BATCH_SIZE, TextEncoder, best_device, encode

log = logging.getLogger(__name__)

# Texts compared with PyTorch before an export is trusted: a long one exercises truncation.
_PARITY_TEXTS = [
    "SQLSTATE 40P01: deadlock detected",
    "work_mem",
    "How do I raise max_connections without restarting the server?",
    " ".join(["checkpoint_timeout and max_wal_size decide how often checkpoints run."] * 40),
]


@dataclass(frozen=True)
class CorpusEncoder:
    """How a stage embeds texts in bulk.

    Attributes:
        encode: unit-normalised float32 vectors of a list of texts.
        runtime: ``onnxruntime`` or ``torch``.
        reason: why PyTorch was kept (empty for onnxruntime).
        export_dir: the ONNX export used (None for PyTorch).
        fanout: where its batches run when not in this process (e.g. Ray's address and workers).
    """

    encode: TextEncoder
    runtime: str
    reason: str = ""
    export_dir: Path | None = None
    fanout: str = ""

    def metadata(self) -> dict[str, str]:
        out = {"encoder_runtime": self.runtime}
        if self.fanout:
            out["encoder_fanout"] = self.fanout
        if self.reason:
            out["encoder_fallback_reason"] = self.reason
        if self.export_dir:
            out["encoder_export_dir"] = str(self.export_dir)
        return out


def corpus_encoder(
    model,
    model_path: str,
    export_dir: Path,
    *,
    batch_size: int = ENCODE_BATCH_SIZE,
    min_cosine: float = 0.9999,
    device: str | None = None,
) -> CorpusEncoder:
    """The fastest faithful bulk encoder for ``model``: onnxruntime on CPU, else PyTorch.

    Args:
        model: the loaded SentenceTransformer (PyTorch fallback, and the parity reference).
        model_path: its folder.
        export_dir: where its export is kept; an export already there is reused (its files
            name the model, so a caller keys the folder by the model).
        batch_size: texts per forward pass (both runtimes).
        min_cosine: the lowest per-text cosine with PyTorch that an export may give on a few
            probe texts (a long one included); below it PyTorch is kept.
        device: where PyTorch runs; default the best available. Anything but ``cpu`` keeps PyTorch.

    With ``$EMBED_ASSETS_RAY_ADDRESS`` set, the onnxruntime batches run on Ray workers
    (:mod:`embed_assets.export.ray_fanout`), with the same vectors; PyTorch stays in this process.

    Raises:
        RaySettingError: a Ray setting that is malformed or names an unreachable cluster.
    """
    # The store's setup already checked the Ray setting; RayTextEncoder connects only when used.
    fanout = ray_settings()

    def torch_encoder(reason: str) -> CorpusEncoder:
        return CorpusEncoder(lambda texts: encode(model, texts, batch_size=batch_size), "torch", reason)

    if (device or best_device()) != "cpu":
        return torch_encoder("a GPU: PyTorch encodes there")
    folder = Path(model_path)
    if not folder.is_dir():
        return torch_encoder(f"{model_path} is not a local model folder")
    try:
        try:
            onnx_encode = onnx_text_encoder(_exported(folder, Path(export_dir)), batch_size)
        except Exception:  # a damaged export from an earlier run: export again, once
            shutil.rmtree(export_dir, ignore_errors=True)
            onnx_encode = onnx_text_encoder(_exported(folder, Path(export_dir)), batch_size)
    except Exception as e:  # any exporter or runtime failure: PyTorch still encodes correctly
        log.warning("onnxruntime encoding unavailable for %s, PyTorch encodes: %s", model_path, e)
        return torch_encoder(f"export failed: {type(e).__name__}: {e}"[:300])

    worst = float((encode(model, _PARITY_TEXTS, batch_size) * onnx_encode(_PARITY_TEXTS)).sum(axis=1).min())
    if worst < min_cosine:
        return torch_encoder(f"export disagrees with PyTorch: cosine {worst:.6f} < {min_cosine}")
    if fanout is None:
        return CorpusEncoder(onnx_encode, "onnxruntime", export_dir=Path(export_dir))
    ray_encode = RayTextEncoder(Path(export_dir), batch_size, fanout)
    return CorpusEncoder(ray_encode, "onnxruntime", export_dir=Path(export_dir), fanout=fanout.describe())


def onnx_text_encoder(export_dir: Path, batch_size: int = ENCODE_BATCH_SIZE) -> TextEncoder:
    """Unit-normalised vectors from an ``export_onnx`` folder, with onnxruntime on CPU."""
    from embed_assets.serving.runtime import OnnxEmbedder, unit_rows

    embedder = OnnxEmbedder(export_dir, providers=["CPUExecutionProvider"])

    def onnx_encode(texts: list[str]) -> np.ndarray:
        vectors = embedder.encode(list(texts), batch_size=batch_size)
        return unit_rows(vectors)

    return onnx_encode


def _exported(model_dir: Path, out_dir: Path) -> Path:
    """``out_dir`` holding a finished fp32 export of ``model_dir``: exported into a temporary
    folder and renamed when complete, so a killed export never leaves a half-written one."""
    from embed_assets.export.onnx_export import export_onnx
    from embed_assets.serving.runtime import DESCRIPTOR_FILE

    if (out_dir / DESCRIPTOR_FILE).is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        export_onnx(model_dir, work)
        shutil.rmtree(out_dir, ignore_errors=True)  # an incomplete folder from an older layout
        work.replace(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir
