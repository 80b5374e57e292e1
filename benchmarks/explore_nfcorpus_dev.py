"""Dev-split exploration of training variants on a BEIR set (NFCorpus by default).

The harness behind the "What was tried" table in the README: one variant per call, trained on
*all* documents' model-free questions (no validation holdout) and scored on the **dev** split
only; the test split is refused, so nothing here can tune on test. The base index and the
scored question pairs are built once in ``--work-dir`` and reused by every later call.

    python benchmarks/explore_nfcorpus_dev.py s10_rt10dd_100 --scale 10 --rt-k 10 --dedup --steps 100
    python benchmarks/explore_nfcorpus_dev.py s20_rt10dd_neg1_100 --scale 20 --rt-k 10 --dedup --neg 1

Appends one JSON line per variant to ``--results`` (default
``benchmarks/results/nfcorpus-dev-explore.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import explore_core_recipe as bench  # noqa: E402
import polars as pl  # noqa: E402


def work_index(work: Path, chunks: pl.DataFrame, base):
    """The base model's chunk table in ``work``, built on first use (and rebuilt for work dirs
    from before the table stored chunk text and its BM25 index)."""
    from embed_assets.index.chunk_index import ChunkIndex, build_chunk_index

    index = ChunkIndex(uri=str(work / "lancedb"))
    if not (work / "lancedb").exists() or not index.has_text_index():
        index = build_chunk_index(chunks, base, work / "lancedb")
    return index


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="variant name (the results key)")
    p.add_argument("--beir-dir", default=str(bench.DEFAULT_BEIR_DIR))
    p.add_argument("--split", default="dev", choices=["dev"], help="dev only: never tune on test")
    p.add_argument("--work-dir", default="/tmp/explore_nfcorpus", help="index, scored pairs and models")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "nfcorpus-dev-explore.jsonl"))
    p.add_argument("--kinds", default="title,keyphrase")
    p.add_argument("--qpc", type=int, default=3, help="questions per chunk")
    p.add_argument("--phrase-positives", type=int, default=1, help="positives per repeated key phrase")
    p.add_argument("--rt-k", type=int, default=0, help="round-trip filter: keep top-k hits (0 = off)")
    p.add_argument(
        "--lex-k", type=int, default=0, help="also keep questions whose positive is in the BM25 top-k"
    )
    p.add_argument("--dedup", action="store_true", help="drop near-duplicate questions (cosine >= 0.9)")
    p.add_argument("--scale", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seq", type=int, default=128, help="training sequence length")
    p.add_argument("--neg", type=int, default=0, help="mined hard negatives per row")
    p.add_argument("--range-min", type=int, default=0, help="mine negatives from this rank on")
    p.add_argument("--merges", default="0.0", help="merge weights with the base to score")
    p.add_argument("--guided", action="store_true", help="base-guided in-batch false-negative masking")
    p.add_argument("--guide-margin", type=float, default=0.0)
    p.add_argument("--guide-strategy", default="absolute", choices=["absolute", "relative"])
    p.add_argument("--val-docs", type=float, default=0.0, help="train without this share of documents")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)

    from embed_assets.evaluation.retrieval import load_beir
    from embed_assets.generation.structure import StructureQuestionGenerator, strip_title
    from embed_assets.index.lexical import lexical_ranks
    from embed_assets.mining.negatives import MiningConfig, mine_hard_negatives
    from embed_assets.models import load_model
    from embed_assets.quality.filters import QualityConfig, score_pairs
    from embed_assets.training.examples import unroll_examples
    from embed_assets.training.trainer import TrainingConfig, _linear_merge, train_bi_encoder

    start = time.time()
    work, beir = Path(a.work_dir), Path(a.beir_dir)
    work.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = load_beir(beir, a.split)
    chunks = bench.read_beir_documents(beir)
    base = load_model("all-MiniLM-L6-v2")
    index = work_index(work, chunks, base)
    kinds = tuple(a.kinds.split(","))
    grouped = f"_pp{a.phrase_positives}" if a.phrase_positives > 1 else ""
    scored_path = work / f"scored_{'_'.join(kinds)}_{a.qpc}{grouped}.parquet"
    if scored_path.exists():
        scored = pl.read_parquet(scored_path)
    else:  # scored once with a wide round trip; each variant then applies its own cut-off
        qa = (
            StructureQuestionGenerator(kinds=kinds, max_phrase_positives=a.phrase_positives)
            .generate(chunks, questions_per_chunk=a.qpc)
            .qa
        )
        scored = score_pairs(qa, chunks, base, index, QualityConfig(roundtrip_top_k=100, lexical_top_k=0))
        scored.write_parquet(scored_path)
    if "lexical_rank" not in scored.columns or scored["lexical_rank"].null_count() == scored.height:
        # BM25 ranks of every question (the bench asks only for the base model's misses)
        ranks = lexical_ranks(
            scored["question"].to_list(), scored["positive_chunk_ids"].to_list(), index, 100
        )
        scored = scored.with_columns(pl.Series("lexical_rank", ranks, dtype=pl.Int32))
        scored.write_parquet(scored_path)
    kept = scored
    if a.val_docs:  # as the bench does: hold out whole documents, train on the rest
        from embed_assets.splitting.splits import SplitConfig, grouped_split

        split = grouped_split(kept, SplitConfig(val_fraction=a.val_docs, test_fraction=0.0, seed=a.seed))
        kept = split.filter(pl.col("split") == "train").drop("split")
    if a.rt_k:
        dense_hit = pl.col("roundtrip_rank").is_not_null() & (pl.col("roundtrip_rank") <= a.rt_k)
        lex_hit = (pl.col("lexical_rank") <= a.lex_k).fill_null(False) if a.lex_k else pl.lit(False)
        kept = kept.filter(dense_hit | lex_hit)
    if a.dedup:
        kept = kept.filter(~pl.col("duplicate"))
    untitled = dict(zip(chunks["chunk_id"], map(strip_title, chunks["text"], chunks["title"]), strict=True))
    mined = kept.select("qa_id", "question", "positive_chunk_ids")
    if a.neg:
        mined, _, _ = mine_hard_negatives(
            mined, base, index, MiningConfig(num_negatives=a.neg, range_min=a.range_min)
        )
    rows = unroll_examples(mined, untitled, negatives_per_example=a.neg)
    cfg = TrainingConfig(
        max_steps=a.steps,
        batch_size=a.batch,
        mini_batch_size=a.batch,
        cached_loss=False,
        scale=a.scale,
        learning_rate=a.lr,
        max_seq_length=a.seq,
        merge_weights=(0.0,),
        guided_in_batch=a.guided,
        guide_margin=a.guide_margin,
        guide_margin_strategy=a.guide_strategy,
        seed=a.seed,
    )
    t_train = time.time()
    result = train_bi_encoder("all-MiniLM-L6-v2", rows, work / "models" / a.name, cfg)
    train_s = time.time() - t_train
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    scores = {}
    for w in (float(x) for x in a.merges.split(",")):
        model = bench.load_for_eval(str(work / "models" / a.name), 256)
        if w > 0:
            _linear_merge(model, base_state, w)
        metrics = bench.score(model, corpus, queries, qrels)
        metrics.pop("per_query_ndcg10")
        scores[str(w)] = metrics
        print(a.name, "merge", w, metrics, flush=True)
    record = {
        "name": a.name,
        "args": {k: v for k, v in vars(a).items() if k not in ("results", "work_dir")},
        "rows": rows.height,
        "steps": result.steps,
        "train_s": round(train_s),
        "total_s": round(time.time() - start),
        "results": scores,
    }
    with open(a.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
