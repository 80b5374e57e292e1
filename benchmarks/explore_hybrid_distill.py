"""Dev-split experiment: GPL-style distillation from a hybrid dense + BM25 teacher.

GPL (Wang et al. 2022) trains a bi-encoder with MarginMSE on margins that a stronger
teacher (a cross-encoder) assigns to (question, positive, negative) triples. No
cross-encoder ships offline, but a hybrid of the base model and BM25 is a stronger
ranker than either on real NFCorpus dev queries: ``cos + w × BM25 / max BM25`` scores
0.334 nDCG@10 at w = 0.2 (``--score-teacher``), against 0.302 for the base model. This
script distils that teacher into the base model, using the explore harness's scored
question pairs (``explore_nfcorpus_dev.py`` must have run once with the same work dir to write them):

- candidates per question: the base model's top ``--depth`` chunks ∪ BM25's top ``--depth``;
- ``--negs`` triples per question, negatives drawn from the candidates (never a positive);
- label = teacher(q, positive) − teacher(q, negative); loss = sentence-transformers'
  ``MarginMSELoss``; 10% warmup then cosine, as the product's trainer.

Dev only (the harness's rule): appends one JSON line to
``benchmarks/results/nfcorpus-dev-explore.jsonl``.

    python benchmarks/explore_hybrid_distill.py distil_w02_200 --bm25-weight 0.2 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import explore_core_recipe as bench  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from explore_nfcorpus_dev import work_index  # noqa: E402


def hybrid_scores(questions: list[str], base, index, depth: int, bm25_weight: float, extra=None):
    """Yield, per question, ``{chunk_id: cos + bm25_weight × BM25 / max BM25}`` over the union of the
    base model's and BM25's top ``depth`` chunks and the ids in ``extra[i]`` (e.g. its positives)."""
    from lancedb.query import MatchQuery

    from embed_assets.index.chunk_index import read_vectors
    from embed_assets.models import encode

    tbl = index.open()
    ids = tbl.to_arrow()["chunk_id"].to_pylist()
    vectors = read_vectors(index, ids)  # fine at 3.6k chunks; a product version would search in batches
    row = {c: i for i, c in enumerate(ids)}
    sims = encode(base, questions) @ vectors.T
    for i, question in enumerate(questions):
        hits = (
            tbl.search(MatchQuery(question, "text"), query_type="fts")
            .limit(depth)
            .select(["chunk_id", "_score"])
        )
        bm25 = {r["chunk_id"]: float(r["_score"]) for r in hits.to_list()}
        top = max(bm25.values(), default=0.0) or 1.0
        candidates = (
            {ids[j] for j in np.argsort(-sims[i])[:depth]} | set(bm25) | set(extra[i] if extra else ())
        )
        yield {c: float(sims[i, row[c]]) + bm25_weight * bm25.get(c, 0.0) / top for c in sorted(candidates)}


def teacher_triplets(scored: pl.DataFrame, base, index, depth: int, bm25_weight: float, negs: int, seed: int):
    """``anchor, positive_id, negative_id, label`` rows scored by the hybrid teacher."""
    questions, positive_lists = scored["question"].to_list(), scored["positive_chunk_ids"].to_list()
    teachers = hybrid_scores(questions, base, index, depth, bm25_weight, extra=positive_lists)
    rng = random.Random(seed)
    rows = []
    for question, positives, teacher in zip(questions, positive_lists, teachers, strict=True):
        negatives = [c for c in teacher if c not in set(positives)]
        for neg in rng.sample(negatives, min(negs, len(negatives))):
            rows.append(
                {
                    "anchor": question,
                    "positive_id": positives[0],
                    "negative_id": neg,
                    "label": teacher[positives[0]] - teacher[neg],
                }
            )
    rng.shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--beir-dir", default=str(bench.DEFAULT_BEIR_DIR))
    p.add_argument("--work-dir", default="/tmp/explore_nfcorpus", help="the explore harness's work dir")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "nfcorpus-dev-explore.jsonl"))
    p.add_argument("--bm25-weight", type=float, default=0.2)
    p.add_argument("--depth", type=int, default=30, help="candidates per question from each ranker")
    p.add_argument("--negs", type=int, default=2, help="triples per question")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--score-teacher", action="store_true", help="only score the teacher on the dev queries")
    a = p.parse_args(argv)

    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss

    from embed_assets.evaluation.retrieval import load_beir
    from embed_assets.generation.structure import strip_title
    from embed_assets.models import load_model, resolve_model_path
    from embed_assets.training.trainer import _set_seeds

    start = time.time()
    work, beir = Path(a.work_dir), Path(a.beir_dir)
    corpus, queries, qrels = load_beir(beir, "dev")
    chunks = bench.read_beir_documents(beir)
    untitled = dict(zip(chunks["chunk_id"], map(strip_title, chunks["text"], chunks["title"]), strict=True))
    scored = pl.read_parquet(work / "scored_title_keyphrase_3.parquet").filter(~pl.col("duplicate"))
    base = load_model("all-MiniLM-L6-v2")
    index = work_index(work, chunks, base)
    if a.score_teacher:
        from embed_assets.evaluation.metrics import ir_metrics

        qids = list(queries)
        scores = hybrid_scores([queries[q] for q in qids], base, index, a.depth, a.bm25_weight)
        run = dict(zip(qids, scores, strict=True))
        metrics = {k: round(v, 4) for k, v in ir_metrics(qrels, run).items() if k in bench.METRICS}
        print(f"teacher (bm25 weight {a.bm25_weight}, depth {a.depth}) on dev:", metrics)
        return metrics
    rows = teacher_triplets(scored, base, index, a.depth, a.bm25_weight, a.negs, a.seed)
    dataset = Dataset.from_dict(
        {
            "anchor": [r["anchor"] for r in rows],
            "positive": [untitled[r["positive_id"]] for r in rows],
            "negative": [untitled[r["negative_id"]] for r in rows],
            "label": [r["label"] for r in rows],
        }
    )
    _set_seeds(a.seed)
    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = 128
    out = work / "models" / a.name
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out) + "_ckpt",
        max_steps=a.steps,
        per_device_train_batch_size=32,
        learning_rate=a.lr,
        warmup_steps=0.1,
        lr_scheduler_type="cosine",
        seed=a.seed,
        save_strategy="no",
        report_to=[],
    )
    t_train = time.time()
    SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=MarginMSELoss(model)
    ).train()
    train_s = time.time() - t_train
    model.save(str(out))
    metrics = bench.score(bench.load_for_eval(str(out), 256), corpus, queries, qrels)
    metrics.pop("per_query_ndcg10")
    print(a.name, metrics, flush=True)
    record = {
        "name": a.name,
        "args": {k: v for k, v in vars(a).items() if k not in ("results", "work_dir")},
        "rows": len(rows),
        "steps": a.steps,
        "train_s": round(train_s),
        "total_s": round(time.time() - start),
        "results": {"0.0": metrics},
    }
    with open(a.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
