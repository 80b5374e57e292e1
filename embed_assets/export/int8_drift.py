"""Does the int8 model retrieve like the fp32 one? nDCG@10 of both ONNX models on a BEIR split.

Dynamic int8 quantisation moves every vector a little (cosine to fp32 about 0.99 for MiniLM), which
is below the fp32 parity bar and says nothing about ranking. What matters is whether retrieval
changes, so this scores both ONNX models on the same held-out queries over the same corpus, with
the same evaluation core as ``retrieval_eval`` (exact cosine search, BEIR/pytrec_eval nDCG@10),
and compares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embed_assets.evaluation.metrics import ir_metrics
from embed_assets.evaluation.retrieval import load_beir, retrieve
from embed_assets.serving.runtime import OnnxEmbedder, unit_rows


@dataclass(frozen=True)
class Int8Drift:
    """nDCG@10 of the fp32 and int8 ONNX models on one query set.

    Attributes:
        queries: queries scored.
        corpus: documents searched.
        fp32_ndcg10: nDCG@10 of ``model.onnx``.
        int8_ndcg10: nDCG@10 of ``model_int8.onnx``.
        drift: ``|int8 − fp32|`` (nDCG units, not points): a quantised copy should rank like the
            model that was evaluated, so a large change either way fails.
        max_drift: the largest drift that passes.
        passed: ``drift ≤ max_drift``.
    """

    queries: int
    corpus: int
    fp32_ndcg10: float
    int8_ndcg10: float
    drift: float
    max_drift: float
    passed: bool

    def to_dict(self) -> dict:
        """Plain dict (rounded), e.g. for asset-check metadata."""
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


class _Encoder:
    """An ``OnnxEmbedder`` behind the sentence-transformers ``encode`` signature that
    ``embed_assets.evaluation.retrieval.retrieve`` calls."""

    def __init__(self, embedder: OnnxEmbedder) -> None:
        self.embedder = embedder

    def get_embedding_dimension(self) -> int:
        return self.embedder.dim

    def encode(
        self, texts: list[str], batch_size: int = 32, normalize_embeddings: bool = True, **_
    ) -> np.ndarray:
        vectors = self.embedder.encode(list(texts), batch_size=batch_size)
        if normalize_embeddings:
            vectors = unit_rows(vectors)
        return vectors


def int8_retrieval_drift(
    onnx_dir: Path | str,
    beir_folder: Path | str,
    *,
    split: str = "test",
    max_drift: float = 0.01,
    top_k: int = 100,
    batch_size: int = 64,
) -> Int8Drift:
    """Score ``model.onnx`` and ``model_int8.onnx`` of an export on a BEIR split and compare nDCG@10.

    Args:
        onnx_dir: an export folder written with ``quantize_int8=True``.
        beir_folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
        split: the qrels split to score.
        max_drift: the largest ``|int8 − fp32|`` nDCG@10 that passes.
        top_k: documents retrieved per query.
        batch_size: texts per onnxruntime call.

    Raises:
        FileNotFoundError: the export has no int8 model, or the BEIR split is missing.
        ValueError: the split has no query.
    """
    corpus, queries, qrels = load_beir(beir_folder, split)
    if not queries:
        raise ValueError(f"{beir_folder}: split {split!r} has no judged query to score")
    scores = {}
    for label, int8 in (("fp32", False), ("int8", True)):
        model = _Encoder(OnnxEmbedder(onnx_dir, int8=int8))
        run = retrieve(model, corpus, queries, top_k=top_k, batch_size=batch_size)
        scores[label] = ir_metrics(qrels, run, k_values=(10,))["NDCG@10"]
    drift = abs(scores["int8"] - scores["fp32"])
    return Int8Drift(
        queries=len(queries),
        corpus=len(corpus),
        fp32_ndcg10=scores["fp32"],
        int8_ndcg10=scores["int8"],
        drift=drift,
        max_drift=max_drift,
        passed=drift <= max_drift,
    )
