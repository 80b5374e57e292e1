"""Research harness (not the product's benchmark): the recipe's core pieces on whole BEIR documents.

This is where the titled-documents preset's values were tuned on NFCorpus dev, and what
produced the measurement history in benchmarks/README.md. It calls the core modules directly
(no Dagster, no chunking): faster to iterate on, but not what users run. The product's own
benchmark is ``bench_nfcorpus.py``. The recipe's values are not restated here: the defaults
below are read from the ``titled-documents`` preset.

The BEIR corpus is treated as the user's documents (one chunk per document, title + text).
Training questions are written from the documents alone: by default model-free title and
key-phrase questions (``StructureQuestionGenerator``); ``--generator embedded`` uses the
offline Gemma 3 270M instead (``--generate-docs N`` limits generation to a seeded sample of
N documents, for slow generators). The split's queries and qrels are used only to
score the three models at the end. Nothing from any qrels file reaches training or model
selection: checkpoints and the LM-Cocktail merge weight are chosen on held-out *generated*
pairs, as the product does for a user who has no labelled queries.

- **base**: all-MiniLM-L6-v2 as shipped.
- **peer**: the plain sentence-transformers recipe on the same generated pairs:
  ``MultipleNegativesRankingLoss`` (scale 20), no filtering, no mined negatives, no merge.
- **ours**: round-trip filtered and de-duplicated pairs, optional positive-aware mined
  negatives (``--negatives N``, 0.95 ceiling; off by default: on NFCorpus dev they cost
  0.5 nDCG@10 points, since a topic has many relevant documents that a miner takes for
  negatives), MNRL at the dev-tuned scale, warmup + cosine, validation on held-out generated
  pairs for checkpoint and merge selection, then a refit from the base on the training and
  validation documents with the selected step count and merge weight (``--no-refit`` skips it).

All three models are scored by exact cosine search of the split's queries over the full
corpus with the base model's sequence length (256), so truncation is the same for all.

    python benchmarks/explore_core_recipe.py                  # NFCorpus test split, ~30 min on 2 CPU cores
    python benchmarks/explore_core_recipe.py --split dev      # for tuning
    python benchmarks/explore_core_recipe.py --beir-dir ../shared/benchmarks/scifact --split test

Writes ``benchmarks/results/<dataset>-<split>.md`` and ``.json``: the metrics table, the
configuration, wall time per stage, peak RSS, LLM calls and the exact command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Run as a plain script from a checkout: make the repository's package importable without installing it.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import polars as pl  # noqa: E402
from bench_nfcorpus import significance  # noqa: E402, F401  (the product benchmark's bootstrap; summarise_seeds reads it)

from embed_assets.recipe.presets import TITLED_DOCUMENTS  # noqa: E402

_TUNED = {**TITLED_DOCUMENTS.settings["synthetic_qa"], **TITLED_DOCUMENTS.settings["training_examples"]}
_TUNED.update(TITLED_DOCUMENTS.settings["finetuned_model"])

METRICS = ("NDCG@10", "Recall@10", "Recall@100", "MAP@10")
DEFAULT_BEIR_DIR = REPO.parent / "shared" / "benchmarks" / "nfcorpus"


@dataclass
class BenchConfig:
    """Everything that decides the numbers (recorded in the result files)."""

    beir_dir: str = str(DEFAULT_BEIR_DIR)
    split: str = "test"
    out_dir: str = str(REPO / "benchmarks" / "results")
    work_dir: str | None = None
    base_model: str = "all-MiniLM-L6-v2"
    max_docs: int | None = None
    # generation
    generator: str = "structure"  # or "embedded" (Gemma 3 270M, offline), "template" or "litellm"
    llm_model: str = "openai/gpt-4o-mini"  # litellm only
    api_base: str | None = None  # litellm only
    api_key_env: str = "OPENAI_API_KEY"  # litellm only: the variable the key is read from
    llm_concurrency: int = 8  # litellm only
    kinds: tuple[str, ...] = ("title", "keyphrase")
    questions_per_chunk: int = _TUNED["questions_per_chunk"]
    phrase_positives: int = 1  # structure: positives of one repeated key phrase
    generate_docs: int | None = None  # write questions for a seeded sample of N documents only
    # quality filter (ours only)
    roundtrip_top_k: int = 10
    lexical_top_k: int = 10
    dedup_cosine: float = 0.9
    # mining (ours only)
    negatives: int = _TUNED["negatives_per_example"]
    max_score_ratio: float = 0.95
    mining_range_min: int = 0
    # training (shared by peer and ours unless noted)
    max_steps: int = _TUNED["max_steps"]
    batch_size: int = 32
    mini_batch_size: int = _TUNED["mini_batch_size"]
    train_seq_len: int = 128
    learning_rate: float = 2e-5
    # ours. Tuned on NFCorpus dev (100 steps, filtered title+keyphrase pairs): nDCG@10 0.3012 at
    # scale 50 (unfiltered), 0.3215 at 20, 0.3229 at 10. The peer keeps sentence-transformers' 20.
    scale: float = _TUNED["scale"]
    guided_in_batch: bool = False  # mask in-batch negatives the base scores above the positive
    merge_weights: tuple[float, ...] = tuple(_TUNED["merge_weights"])
    val_fraction: float = 0.1
    # Retrain on the training *and* validation documents once validation has chosen the merge weight
    # and step count (refit after model selection). On dev, the 10% holdout cost 0.40 nDCG@10.
    refit: bool = _TUNED["refit"]
    val_queries: int = 200
    val_corpus: int = 600
    eval_steps: int | None = None  # None: validate once, at the end (CPU budget)
    # evaluation
    eval_seq_len: int = 256
    run_peer: bool = True
    explore_merges: tuple[float, ...] = ()
    seed: int = 42


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - start, 1)
            print(f"[bench] {name}: {self.stages[name]} s (peak RSS {peak_rss_mb():.0f} MB)", flush=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def read_beir_documents(beir_dir: Path, max_docs: int | None = None) -> pl.DataFrame:
    """The BEIR corpus as a chunk frame: one chunk per document, ``chunk_id = doc_id = _id``.

    The same documents and text as :func:`load_beir` (both read it with ``read_beir_corpus``),
    so the base model's index vectors are also the base model's evaluation vectors.
    """
    from embed_assets.evaluation.retrieval import joined_text, read_beir_corpus
    from embed_assets.ingest.chunking import CHUNK_SCHEMA

    corpus = list(read_beir_corpus(beir_dir / "corpus.jsonl").items())[:max_docs]
    rows = [
        {
            "chunk_id": doc_id,
            "doc_id": doc_id,
            "doc_path": doc_id,
            "chunk_index": 0,
            "title": title,
            "text": joined_text(title, text),
            "n_tokens": 0,
        }
        for doc_id, (title, text) in corpus
    ]
    return pl.DataFrame(rows, schema=CHUNK_SCHEMA)


def validation_set(val_pairs: pl.DataFrame, train_text: dict[str, str], cfg: BenchConfig):
    """Held-out generated pairs (their documents never trained on) over a sampled corpus."""
    from embed_assets.training.trainer import ValidationSet

    rng = random.Random(cfg.seed)
    rows = list(val_pairs.select("qa_id", "question", "positive_chunk_ids").iter_rows())
    rng.shuffle(rows)
    rows = rows[: cfg.val_queries]
    positives = sorted({c for _, _, p in rows for c in p})
    others = sorted(set(train_text) - set(positives))
    rng.shuffle(others)
    corpus_ids = positives + others[: max(0, cfg.val_corpus - len(positives))]
    return ValidationSet(
        queries={q: text for q, text, _ in rows},
        corpus={c: train_text[c] for c in corpus_ids},
        relevant={q: set(p) for q, _, p in rows},
    )


def load_for_eval(model_dir: str, seq_len: int):
    from sentence_transformers import SentenceTransformer

    from embed_assets.models import best_device

    model = SentenceTransformer(model_dir, device=best_device())
    model.max_seq_length = seq_len
    return model


def score(model, corpus, queries, qrels, vectors=None) -> dict[str, float]:
    """The aggregate metrics, plus ``"per_query_ndcg10"`` (query id -> nDCG@10) for significance."""
    from embed_assets.evaluation.metrics import ir_metrics, per_query_ndcg
    from embed_assets.evaluation.retrieval import retrieve

    run = retrieve(model, corpus, queries, top_k=100, corpus_vectors=vectors)
    m = ir_metrics(qrels, run)
    return {**{k: round(m[k], 4) for k in METRICS}, "per_query_ndcg10": per_query_ndcg(qrels, run, 10)}


def shared_training_settings(cfg: BenchConfig) -> dict:
    """The training settings the peer and ours share."""
    return {
        "max_steps": cfg.max_steps,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "max_seq_length": cfg.train_seq_len,
        "seed": cfg.seed,
    }


def ours_training_config(cfg: BenchConfig, validated: bool):
    """Ours' training recipe. ``validated``: a validation set will choose the checkpoint and the
    merge weight; without one, no merge is applied."""
    from embed_assets.training.trainer import TrainingConfig

    return TrainingConfig(
        **shared_training_settings(cfg),
        mini_batch_size=cfg.mini_batch_size,
        cached_loss=True,
        scale=cfg.scale,
        guided_in_batch=cfg.guided_in_batch,
        merge_weights=tuple(cfg.merge_weights) if validated else (0.0,),
        eval_steps=(cfg.eval_steps or cfg.max_steps) if validated else None,
    )


def refit(cfg: BenchConfig, ours_cfg, selected, rows: pl.DataFrame, out_dir: Path) -> Path:
    """Retrain from the base on ``rows`` (training + validation documents) with what validation
    chose on the first run: its step count and merge weight. Nothing is selected here, so the
    held-out pairs only ever chose settings, never fed a model that was then judged on them."""
    from dataclasses import replace

    from embed_assets.training.trainer import train_bi_encoder

    # Without validation the trainer applies a single merge weight as given.
    refit_cfg = replace(
        ours_cfg, max_steps=selected.steps, merge_weights=(selected.merge_weight,), eval_steps=None
    )
    train_bi_encoder(cfg.base_model, rows, out_dir, refit_cfg)
    return out_dir


def build_generator(cfg: BenchConfig, work: Path):
    """The question generator the run uses; all are offline (no endpoint)."""
    if cfg.generator == "structure":
        from embed_assets.generation.structure import StructureQuestionGenerator

        return StructureQuestionGenerator(kinds=tuple(cfg.kinds), max_phrase_positives=cfg.phrase_positives)
    if cfg.generator == "embedded":
        from embed_assets.generation.embedded_llm import EmbeddedLLMQuestionGenerator

        # The cache makes a re-run with the same --work-dir free (no LLM call spent twice).
        return EmbeddedLLMQuestionGenerator(cache_path=str(work / "llm_cache.sqlite"), seed=cfg.seed)
    if cfg.generator == "template":
        from embed_assets.generation.template import TemplateQuestionGenerator

        return TemplateQuestionGenerator()
    if cfg.generator == "litellm":
        from embed_assets.generation.llm_generator import LLMSettings, build_llm_generator

        # The key comes from the environment only; it is never written to the result files.
        settings = LLMSettings(
            model=cfg.llm_model,
            api_base=cfg.api_base,
            api_key=os.environ.get(cfg.api_key_env),
            concurrency=cfg.llm_concurrency,
            cache_path=str(work / "llm_cache.sqlite"),
            seed=cfg.seed,
        )
        return build_llm_generator(settings)
    raise ValueError(f"unknown generator {cfg.generator!r}: structure, embedded, template or litellm")


def run_benchmark(cfg: BenchConfig, command: str) -> dict:
    import numpy as np
    import torch

    from embed_assets.evaluation.retrieval import load_beir
    from embed_assets.generation.structure import StructureQuestionGenerator, strip_title
    from embed_assets.index.chunk_index import build_chunk_index, read_vectors
    from embed_assets.mining.negatives import MiningConfig, mine_hard_negatives
    from embed_assets.models import resolve_model_path
    from embed_assets.quality.filters import QualityConfig, filter_summary, score_pairs
    from embed_assets.splitting.splits import SplitConfig, grouped_split
    from embed_assets.training.examples import unroll_examples
    from embed_assets.training.trainer import TrainingConfig, _linear_merge, train_bi_encoder

    if cfg.explore_merges and cfg.split == "test":
        raise ValueError("--explore-merges evaluates extra variants: tuning is allowed on dev only, not test")
    beir_dir = Path(cfg.beir_dir).resolve()
    dataset = beir_dir.name
    started = time.perf_counter()
    load_start = os.getloadavg()
    t = Timings()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tmp = None
    if cfg.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="explore_core_recipe_")
        work = Path(tmp.name)
    else:
        work = Path(cfg.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    out: dict = {"dataset": dataset, "split": cfg.split, "command": command, "config": asdict(cfg)}

    with t.stage("load"):
        corpus, queries, qrels = load_beir(beir_dir, cfg.split)
        chunks = read_beir_documents(beir_dir, cfg.max_docs)
        if cfg.max_docs:
            keep = set(chunks["chunk_id"])
            corpus = {k: v for k, v in corpus.items() if k in keep}
            qrels = {q: {d: s for d, s in r.items() if d in keep} for q, r in qrels.items()}
            qrels = {q: r for q, r in qrels.items() if r}
            queries = {q: v for q, v in queries.items() if q in qrels}
        # A private instance: load_model's memoised one is shared in-process, and its
        # sequence length must not change under other callers.
        base = load_for_eval(str(resolve_model_path(cfg.base_model)), cfg.eval_seq_len)
        full_text = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
        # Title questions' training text: the text without its title, which the question
        # would otherwise copy verbatim.
        train_text = dict(
            zip(
                chunks["chunk_id"],
                [strip_title(x, ti) for x, ti in zip(chunks["text"], chunks["title"], strict=True)],
                strict=True,
            )
        )
    out["corpus_docs"], out["eval_queries"] = len(corpus), len(queries)

    with t.stage("index (base embeddings)"):
        index = build_chunk_index(chunks, base, work / "lancedb")

    with t.stage("generate"):
        gen = build_generator(cfg, work)
        multi_hop = 200 if cfg.generator == "litellm" else 0  # only an LLM writes multi-hop questions
        source = chunks
        if cfg.generate_docs and cfg.generate_docs < chunks.height:
            source = chunks.sample(cfg.generate_docs, seed=cfg.seed)
        generated = gen.generate(
            source, questions_per_chunk=cfg.questions_per_chunk, multi_hop_questions=multi_hop, seed=cfg.seed
        )
        qa = generated.qa
    out["generation"] = {
        "generator": gen.name,
        "documents": source.height,
        "pairs": qa.height,
        **generated.stats,
    }
    llm_calls = int(generated.stats.get("llm_calls", 0))

    with t.stage("filter"):
        scored = score_pairs(
            qa,
            chunks,
            base,
            index,
            QualityConfig(
                roundtrip_top_k=cfg.roundtrip_top_k,
                lexical_top_k=cfg.lexical_top_k,
                dedup_cosine=cfg.dedup_cosine,
            ),
        )
        # Hold out documents first, then filter only the training side: validation pairs
        # that passed the base model's round-trip would be the ones the base already gets
        # right, and could not tell a better model from the base.
        scored = grouped_split(
            scored, SplitConfig(val_fraction=cfg.val_fraction, test_fraction=0.0, seed=cfg.seed)
        )
        kept = scored.filter(pl.col("kept"))
        train_pairs = kept.filter(pl.col("split") == "train")
        val_pairs = scored.filter(pl.col("split") == "val")
    summary = filter_summary(scored)
    out["filter"] = {
        "kept": summary["kept"],
        "train_pairs": train_pairs.height,
        "val_pairs": val_pairs.height,
        "kept_by_type": dict(kept.group_by("query_type").len().rows()),
        "kept_by_lexical_only": summary["kept_by_lexical_only"],
        **{f"dropped:{reason}": n for reason, n in summary["dropped"].items()},
    }

    # A refit trains on the validation documents' kept pairs too, so they are mined as well.
    fit_pairs = kept if cfg.refit else train_pairs
    with t.stage("mine negatives"):
        if cfg.negatives > 0:
            mined, counts, _ = mine_hard_negatives(
                fit_pairs.select("qa_id", "question", "positive_chunk_ids"),
                base,
                index,
                MiningConfig(
                    num_negatives=cfg.negatives,
                    max_score_ratio=cfg.max_score_ratio,
                    range_min=cfg.mining_range_min,
                    seed=cfg.seed,
                ),
            )
            out["mining"] = counts
        else:
            mined = fit_pairs.select("qa_id", "question", "positive_chunk_ids")
            out["mining"] = {"skipped": "negatives=0: in-batch negatives only"}
        # Questions written from titles train on untitled text (as the product's
        # training_examples asset does); other generators' questions keep the full text.
        title_qa = set(qa.filter(pl.col("generator") == StructureQuestionGenerator.name)["qa_id"])
        texts = {"untitled_text": train_text, "untitled_qa_ids": title_qa}
        train_mined = mined.filter(pl.col("qa_id").is_in(train_pairs["qa_id"].implode()))
        ours_rows = unroll_examples(train_mined, full_text, negatives_per_example=cfg.negatives, **texts)
        refit_rows = (
            unroll_examples(mined, full_text, negatives_per_example=cfg.negatives, **texts)
            if cfg.refit
            else None
        )
        peer_rows = unroll_examples(qa, full_text, negatives_per_example=0, **texts)
    out["train_rows"] = {"ours": ours_rows.height, "peer": peer_rows.height}
    if cfg.refit:
        out["train_rows"]["ours_refit"] = refit_rows.height

    val = validation_set(val_pairs, train_text, cfg) if val_pairs.height else None
    with t.stage("train ours"):
        ours_cfg = ours_training_config(cfg, validated=val is not None)
        ours_result = train_bi_encoder(cfg.base_model, ours_rows, work / "ours", ours_cfg, val=val)
    out["ours_training"] = {
        k: v for k, v in asdict(ours_result).items() if k not in ("history", "model_dir", "device")
    }
    out["ours_training"]["val_history"] = [
        {"step": h["step"], "val_ndcg10": round(h["eval_val_cosine_ndcg@10"], 4)}
        for h in ours_result.history
        if "eval_val_cosine_ndcg@10" in h
    ]

    ours_dir = work / "ours"
    if cfg.refit:
        with t.stage("refit ours"):
            ours_dir = refit(cfg, ours_cfg, ours_result, refit_rows, work / "ours_refit")
        out["ours_training"]["refit"] = {"rows": refit_rows.height, "steps": ours_result.steps}

    if cfg.run_peer:
        with t.stage("train peer"):
            peer_cfg = TrainingConfig(
                **shared_training_settings(cfg), cached_loss=False, scale=20.0, merge_weights=(0.0,)
            )
            peer_result = train_bi_encoder(cfg.base_model, peer_rows, work / "peer", peer_cfg)
        out["peer_training"] = {"steps": peer_result.steps, "train_seconds": peer_result.train_seconds}

    results: dict[str, dict[str, float]] = {}
    with t.stage("eval base"):
        results["base"] = score(base, corpus, queries, qrels, vectors=read_vectors(index, list(corpus)))
    if cfg.run_peer:
        with t.stage("eval peer"):
            results["peer"] = score(
                load_for_eval(str(work / "peer"), cfg.eval_seq_len), corpus, queries, qrels
            )
    with t.stage("eval ours"):
        ours_model = load_for_eval(str(ours_dir), cfg.eval_seq_len)
        results["ours"] = score(ours_model, corpus, queries, qrels)
    if cfg.explore_merges:
        # Dev-only exploration: how other merge weights would have scored on the split.
        base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
        chosen = ours_result.merge_weight
        for w in cfg.explore_merges:
            with t.stage(f"explore merge {w}"):
                # ours = (1-c)·tuned + c·base, so tuned = (ours - c·base)/(1-c); re-merge at w.
                model = load_for_eval(str(ours_dir), cfg.eval_seq_len)
                with torch.no_grad():
                    for name, p in model.state_dict().items():
                        if name in base_state and p.dtype.is_floating_point:
                            p.sub_(base_state[name], alpha=chosen).div_(1 - chosen)
                _linear_merge(model, base_state, w)
                results[f"ours@merge{w}"] = score(model, corpus, queries, qrels)

    per_query = {name: r.pop("per_query_ndcg10") for name, r in results.items()}
    out["results"] = results
    out["significance_ndcg10"] = significance(per_query)
    out["per_query_ndcg10"] = per_query
    out["deltas_points_vs_base"] = {
        name: {k: round((r[k] - results["base"][k]) * 100, 2) for k in METRICS}
        for name, r in results.items()
        if name != "base"
    }
    out["timings_s"] = {**t.stages, "total": round(time.perf_counter() - started, 1)}
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["llm_calls"] = llm_calls
    out["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    out["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_results(out, Path(cfg.out_dir))
    if tmp is not None:
        tmp.cleanup()
    return out


def results_markdown(out: dict) -> str:
    res = out["results"]
    lines = [
        f"# {out['dataset']} ({out['split']}): base vs peer vs embed_assets",
        "",
        f"{out['eval_queries']} queries over {out['corpus_docs']} documents, exact cosine search. "
        f"Training data: {out['generation']['pairs']} questions written by "
        f"`{out['generation']['generator']}` for {out['generation']['documents']} documents of the corpus "
        f"(no query or qrels file read); LLM calls: {out['llm_calls']}.",
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "| --- |" + " --- |" * len(METRICS),
    ]
    for name, r in res.items():
        cells = []
        for k in METRICS:
            cell = f"{r[k]:.4f}"
            if name != "base":
                cell += f" ({(r[k] - res['base'][k]) * 100:+.2f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "(in brackets: change against base, in points ×100)", ""]
    if out.get("significance_ndcg10"):
        lines += [
            "Is the nDCG@10 difference real? Paired bootstrap over the queries (10,000 resamples):",
            "",
            "| comparison | delta (points) | 95% CI | p (two-sided) |",
            "| --- | --- | --- | --- |",
            *[
                f"| {k} | {v['delta']:+.2f} | [{v['ci95_low']:+.2f}, {v['ci95_high']:+.2f}] | {v['p_two_sided']:.3f} |"
                for k, v in out["significance_ndcg10"].items()
            ],
            "",
        ]
    ot = out["ours_training"]
    lines += [
        "## Runs",
        "",
        f"- ours: {ot['steps']} steps on {out['train_rows']['ours']} filtered rows"
        f"{', base-guided in-batch negatives' if out['config'].get('guided_in_batch') else ''}, merge weight with base "
        f"{ot['merge_weight']} (validation nDCG@10 on held-out generated pairs: base {ot['base_val_ndcg10']}, "
        f"candidates {ot['merge_candidates']})"
        + (
            f", then refit from the base on {ot['refit']['rows']} rows of the training and validation "
            f"documents for {ot['refit']['steps']} steps"
            if ot.get("refit")
            else ""
        ),
    ]
    if "peer_training" in out:
        lines.append(
            f"- peer: {out['peer_training']['steps']} steps on {out['train_rows']['peer']} unfiltered rows"
        )
    lines += [
        f"- filter: {json.dumps(out['filter'])}",
        f"- mining: {json.dumps(out['mining'])}",
        "",
        "## Cost",
        "",
        "| stage | wall s |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in out["timings_s"].items()],
        "",
        f"Peak RSS: {out['peak_rss_mb']} MB. LLM calls: {out['llm_calls']}. Machine: "
        f"{out['machine']['cpu_count']} CPU, {out['machine']['device']}, load average at start "
        f"{out['machine']['loadavg_start']}, at end {out['machine']['loadavg_end']}.",
        "",
        "## Command",
        "",
        "```",
        out["command"],
        "```",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(out["config"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_results(out: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = out["config"]
    stem = f"{out['dataset']}-{out['split']}"
    if cfg.get("generator", "structure") != "structure":
        stem += f"-{cfg['generator']}"
    if cfg.get("generate_docs"):
        stem += f"-{cfg['generate_docs']}docs"
    if cfg.get("refit", BenchConfig.refit) != BenchConfig.refit:
        stem += "-refit" if cfg.get("refit") else "-norefit"
    if not cfg.get("lexical_top_k", 0):  # runs from before the option had none
        stem += "-nolex"
    if cfg.get("seed", BenchConfig.seed) != BenchConfig.seed:
        stem += f"-seed{cfg['seed']}"
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md.write_text(results_markdown(out), encoding="utf-8")
    js.write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
    out["files"] = [str(md), str(js)]
    return md, js


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None) -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--beir-dir", default=d.beir_dir, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--split", default=d.split, choices=["test", "dev", "train"])
    p.add_argument("--out-dir", default=d.out_dir)
    p.add_argument("--work-dir", default=None, help="keep models and index here (default: a temp folder)")
    p.add_argument("--base-model", default=d.base_model)
    p.add_argument("--max-docs", type=int, default=None, help="use only the first N documents (smoke runs)")
    p.add_argument(
        "--generator", default=d.generator, choices=["structure", "embedded", "template", "litellm"]
    )
    p.add_argument("--llm-model", default=d.llm_model, help="litellm model string (--generator litellm)")
    p.add_argument("--api-base", default=None, help="OpenAI-compatible server URL (--generator litellm)")
    p.add_argument("--api-key-env", default=d.api_key_env, help="environment variable holding the API key")
    p.add_argument("--llm-concurrency", type=int, default=d.llm_concurrency)
    p.add_argument(
        "--generate-docs", type=int, default=None, help="generate for a seeded sample of N documents only"
    )
    p.add_argument(
        "--kinds", default=",".join(d.kinds), help="structure question kinds: title,title_main,keyphrase"
    )
    p.add_argument("--questions-per-chunk", type=int, default=d.questions_per_chunk)
    p.add_argument(
        "--phrase-positives",
        type=int,
        default=d.phrase_positives,
        help="structure: one question per repeated key phrase with up to N positives",
    )
    p.add_argument("--roundtrip-top-k", type=int, default=d.roundtrip_top_k)
    p.add_argument(
        "--lexical-top-k",
        type=int,
        default=d.lexical_top_k,
        help="also keep questions the base model misses when BM25 ranks a positive this high (0 = off)",
    )
    p.add_argument("--negatives", type=int, default=d.negatives, help="mined hard negatives per row (ours)")
    p.add_argument("--mining-range-min", type=int, default=d.mining_range_min)
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="optimiser steps, peer and ours each")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--mini-batch-size", type=int, default=d.mini_batch_size)
    p.add_argument("--train-seq-len", type=int, default=d.train_seq_len)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--scale", type=float, default=d.scale, help="ours; the peer uses 20")
    p.add_argument(
        "--guided",
        action=argparse.BooleanOptionalAction,
        default=d.guided_in_batch,
        help="ours: base-guided in-batch false-negative masking (GISTEmbed)",
    )
    p.add_argument("--merge-weights", default=",".join(map(str, d.merge_weights)))
    p.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=d.refit,
        help="ours: after validation chose steps and merge weight, retrain on train + validation documents",
    )
    p.add_argument("--val-queries", type=int, default=d.val_queries)
    p.add_argument("--val-corpus", type=int, default=d.val_corpus)
    p.add_argument("--eval-steps", type=int, default=None)
    p.add_argument("--eval-seq-len", type=int, default=d.eval_seq_len)
    p.add_argument("--no-peer", action="store_true", help="skip the peer (exploration only)")
    p.add_argument(
        "--explore-merges", default="", help="dev only: also score ours re-merged at these weights"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    return BenchConfig(
        beir_dir=a.beir_dir,
        split=a.split,
        out_dir=a.out_dir,
        work_dir=a.work_dir,
        base_model=a.base_model,
        max_docs=a.max_docs,
        generator=a.generator,
        llm_model=a.llm_model,
        api_base=a.api_base,
        api_key_env=a.api_key_env,
        llm_concurrency=a.llm_concurrency,
        generate_docs=a.generate_docs,
        kinds=tuple(k.strip() for k in a.kinds.split(",") if k.strip()),
        questions_per_chunk=a.questions_per_chunk,
        phrase_positives=a.phrase_positives,
        roundtrip_top_k=a.roundtrip_top_k,
        lexical_top_k=a.lexical_top_k,
        negatives=a.negatives,
        mining_range_min=a.mining_range_min,
        max_steps=a.max_steps,
        batch_size=a.batch_size,
        mini_batch_size=a.mini_batch_size,
        train_seq_len=a.train_seq_len,
        learning_rate=a.learning_rate,
        scale=a.scale,
        guided_in_batch=a.guided,
        merge_weights=_floats(a.merge_weights),
        refit=a.refit,
        val_queries=a.val_queries,
        val_corpus=a.val_corpus,
        eval_steps=a.eval_steps,
        eval_seq_len=a.eval_seq_len,
        run_peer=not a.no_peer,
        explore_merges=_floats(a.explore_merges),
        seed=a.seed,
    )


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the result record (also written to ``--out-dir``)."""
    args = sys.argv[1:] if argv is None else argv
    cfg = parse_args(args)
    command = shlex.join([sys.executable, str(Path(__file__).resolve().relative_to(REPO)), *args])
    out = run_benchmark(cfg, command)
    print(results_markdown(out))
    return out


if __name__ == "__main__":
    main()
