"""Stage 7: base vs fine-tuned on the held-out test split (and on labelled queries), BEIR metrics."""

import time
from functools import partial
from pathlib import Path

import dagster as dg
import polars as pl

from embed_assets.defs.assets.indexing import base_embedding_cache
from embed_assets.defs.assets.splitting import beir_dir
from embed_assets.defs.assets.teacher import teacher_cache
from embed_assets.defs.configs import RetrievalEvalConfig
from embed_assets.defs.metadata import counts_table, image, stage_metrics
from embed_assets.defs.resources import ArtifactStoreResource, BaseModelResource, TeacherResource
from embed_assets.evaluation.gate import no_regression
from embed_assets.evaluation.general import general_retrieval_set
from embed_assets.evaluation.labelled import document_run, labelled_queries_of, without_queries_that_chose
from embed_assets.evaluation.metrics import (
    DEFAULT_METRICS,
    compare_runs,
    delta_points,
    ir_metrics,
    markdown_table,
)
from embed_assets.evaluation.report import (
    evaluation_report_png,
    metric_slug,
    per_query_frame,
    query_set_version,
    top_movers,
)
from embed_assets.evaluation.retrieval import load_beir, retrieve
from embed_assets.export.onnx_encoder import corpus_encoder
from embed_assets.index.chunk_index import ChunkIndex, EmbeddingCache, model_key, read_vectors
from embed_assets.lineage import code_version
from embed_assets.models import embedding_dim, encode, load_model
from embed_assets.teacher.evaluation import teacher_run


def _teacher_side(
    teacher: TeacherResource, store: ArtifactStoreResource, base_chunk_index: dict, corpus: dict
):
    """``score(queries, candidates, depth) -> run`` for the teacher, zero-shot (None without one).

    A bi-encoder teacher's vectors of the corpus and queries come from the content-hash cache its
    labelling filled; a cross-encoder reranks the base model's candidates, its scores in the
    teacher cache."""
    if not teacher.enabled:
        return None
    model = teacher.load().with_embedding_cache(store.path("lancedb"))

    def score(queries: dict, candidates: dict, depth: int) -> dict:
        scores = teacher_cache(store)  # open per call and closed: the asset never holds it between calls
        try:
            return teacher_run(
                model,
                scores,
                corpus,
                queries,
                depth,
                candidates=candidates,
                corpus_vectors=lambda: model.embed(list(corpus.values())),
                embed=model.embed,
            )
        finally:
            scores.close()

    return score


def _teacher_markdown(scores: dict[str, dict[str, dict[str, float]]]) -> str:
    frame = pl.DataFrame(
        [
            {"query set": query_set, "model": name, **{m: round(metrics[m], 4) for m in DEFAULT_METRICS}}
            for query_set, models in scores.items()
            for name, metrics in models.items()
        ]
    )
    return markdown_table(frame)


def _summary_metadata(prefix: str, comparison: dict) -> dict:
    """The nDCG@10 gain's interval and p-value, as text: they are read, not plotted."""
    sig = comparison["ndcg10_significance"]
    return {
        f"{prefix}ndcg10_delta_ci95_points": f"[{sig['ci95_low']:+.2f}, {sig['ci95_high']:+.2f}]",
        f"{prefix}ndcg10_delta_p_value": sig["p_text"],
    }


def _metric_metadata(query_set: str, version: str, comparison: dict) -> dict:
    """Every metric of both models, and the gain in points, as numbers Dagster plots across runs.

    Dagster plots one chart per numeric metadata key and joins every materialization that has
    the key. Scores on different test sets are not comparable (a new corpus or split means other
    questions), and Dagster cannot attach a tag to one metadata entry, so the query set and its
    content version are part of the key: ``ndcg10_fine_tuned@synthetic-1a2b3c4d``. Runs on the
    same test set share a chart; a new test set starts a new one instead of joining the old
    line. The version is also in ``<set>_set_version`` and in the run's tags, to filter runs.
    """
    out: dict = {}
    for metric in DEFAULT_METRICS:
        slug, at = metric_slug(metric), f"@{query_set}-{version}"
        out[f"{slug}_base{at}"] = dg.MetadataValue.float(round(comparison["base"][metric], 4))
        out[f"{slug}_fine_tuned{at}"] = dg.MetadataValue.float(round(comparison["fine_tuned"][metric], 4))
        out[f"{slug}_delta_points{at}"] = dg.MetadataValue.float(round(delta_points(comparison, metric), 2))
    return out


def _movers_metadata(prefix: str, frame: pl.DataFrame) -> dict:
    gained, lost = top_movers(frame, 10)
    shown = [
        pl.col("query").str.slice(0, 100).str.replace_all(r"[\n|]", " "),
        (pl.col("ndcg10_delta") * 100).round(2).alias("ndcg10_delta_points"),
    ]
    return {
        f"{prefix}top_gains": dg.MetadataValue.md(
            markdown_table(gained.with_columns(shown).drop("ndcg10_delta")) if gained.height else "_none_"
        ),
        f"{prefix}top_losses": dg.MetadataValue.md(
            markdown_table(lost.with_columns(shown).drop("ndcg10_delta")) if lost.height else "_none_"
        ),
    }


def _by_generator(per_query: pl.DataFrame, qa_splits: pl.DataFrame) -> dict[str, dict]:
    """Mean nDCG@10 of base and fine-tuned over each generator's test questions."""
    generator = dict(zip(qa_splits["qa_id"], qa_splits["generator"], strict=True))
    grouped = (
        per_query.with_columns(generator=pl.col("query_id").replace_strict(generator, default="unknown"))
        .group_by("generator")
        .agg(
            queries=pl.len(), base=pl.col("base_ndcg10").mean(), fine_tuned=pl.col("fine_tuned_ndcg10").mean()
        )
        .sort("generator")
    )
    return {
        r["generator"]: {
            "queries": r["queries"],
            "base": round(r["base"], 4),
            "fine_tuned": round(r["fine_tuned"], 4),
            "delta_points": round((r["fine_tuned"] - r["base"]) * 100, 2),
        }
        for r in grouped.iter_rows(named=True)
    }


def _by_generator_markdown(by_generator: dict[str, dict]) -> str:
    rows = [
        "| generator | test questions | nDCG@10 base | fine-tuned | delta (points) |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows += [
        f"| {g} | {m['queries']} | {m['base']:.4f} | {m['fine_tuned']:.4f} | {m['delta_points']:+.2f} |"
        for g, m in by_generator.items()
    ]
    return "\n".join(rows)


def _without_per_query(comparison: dict) -> dict:
    """A comparison for the asset's JSON value: the per-query scores go to the Parquet file."""
    return {k: v for k, v in comparison.items() if k != "per_query"}


@dg.asset(
    group_name="evaluation",
    code_version=code_version(
        __name__,
        "embed_assets.evaluation.metrics",
        "embed_assets.evaluation.retrieval",
        "embed_assets.evaluation.labelled",
        "embed_assets.evaluation.gate",
        "embed_assets.export.onnx_encoder",
    ),
    kinds={"beir"},
    description="nDCG@1/5/10, Recall@10/100, MAP@10 and MRR@10 of the base and the fine-tuned model on the "
    "held-out test split (whole chunk corpus), with absolute and relative deltas; and on queries written by "
    "people when labelled_queries_dir is set (documents scored by their best chunk).",
    check_specs=[
        dg.AssetCheckSpec("no_regression_vs_base", asset="retrieval_eval", blocking=True),
        dg.AssetCheckSpec(
            "general_domain_forgetting",
            asset="retrieval_eval",
            blocking=False,
            description="nDCG@10 of base and fine-tuned on a general-domain set (Python standard-library "
            "docstrings): warns when fine-tuning cost more than max_forgetting_points",
        ),
    ],
)
def retrieval_eval(
    context: dg.AssetExecutionContext,
    config: RetrievalEvalConfig,
    finetuned_model: dict,
    qa_splits: pl.DataFrame,
    source_documents: pl.DataFrame,
    document_chunks: pl.DataFrame,
    base_chunk_index: dict,
    base_model: BaseModelResource,
    teacher: TeacherResource,
    store: ArtifactStoreResource,
):  # no return annotation: with check specs Dagster would read it as a multi-output tuple
    start = time.perf_counter()
    folder = beir_dir(store, qa_splits, document_chunks)
    corpus, queries, qrels = load_beir(folder, "test")
    # Read the labelled set first: a naming mistake should fail before minutes of encoding.
    labelled = None
    if config.labelled_queries_dir:
        labelled = without_queries_that_chose(
            labelled_queries_of(config.labelled_queries_dir, config.labelled_queries_split, source_documents),
            finetuned_model.get("selection_query_texts") or {},
        )
        if chose := labelled.skipped.get("query_chose_the_model"):
            context.log.warning(
                "%d labelled queries of %s chose the fine-tuned model: they are left out of its evaluation",
                chose,
                labelled.source,
            )
    # Each model's corpus embeddings are computed once and serve both query sets. The base
    # model's are already in the LanceDB index (same model, same chunk texts), and its query
    # vectors in the index's embedding cache; the fine-tuned model's are cached by chunk content
    # too, so evaluating again (labelled queries added, another top_k) embeds nothing twice.
    base, tuned = base_model.load(), load_model(finetuned_model["path"])
    base_embed = None
    if base_chunk_index.get("model") == base_model.path():
        base_cache = base_embedding_cache(base_chunk_index, base)
        base_embed = partial(base_cache.text_vectors, model=base) if base_cache else None
        base_vectors = read_vectors(
            ChunkIndex(base_chunk_index["uri"], base_chunk_index["table"]), list(corpus)
        )
    else:
        base_vectors = encode(base, list(corpus.values()))
    # On CPU the fine-tuned model embeds with onnxruntime on its ONNX export (what onnx_model
    # writes for the server, exported the same way): faster, and the served graph is scored.
    tuned_name = Path(finetuned_model["path"]).name
    tuned_encoder = corpus_encoder(tuned, finetuned_model["path"], store.path("encoders", tuned_name))
    tuned_cache = EmbeddingCache(
        base_chunk_index["uri"],
        model_key(finetuned_model["path"]),
        embedding_dim(tuned),
        tuned_encoder.encode,
    )
    tuned_vectors = tuned_cache.vectors(
        pl.DataFrame({"chunk_id": list(corpus), "text": list(corpus.values())}), tuned
    )
    tuned_embed = partial(tuned_cache.text_vectors, model=tuned)
    # (model, its corpus vectors, how it embeds other texts: None encodes them)
    sides = {"base": (base, base_vectors, base_embed), "fine_tuned": (tuned, tuned_vectors, tuned_embed)}

    def run(side, qs, top_k):
        model, vectors, embed = sides[side]
        return retrieve(model, corpus, qs, top_k=top_k, corpus_vectors=vectors, embed=embed)

    synthetic_runs = (
        run("base", queries, config.top_k),
        run("fine_tuned", queries, config.top_k),
    )
    synthetic = compare_runs(qrels, *synthetic_runs)
    evaluations = {"synthetic test split": synthetic}
    # The teacher, zero-shot on the same queries: not gated, it shows how far the student got.
    teacher_score = _teacher_side(teacher, store, base_chunk_index, corpus)
    teacher_scores: dict[str, dict[str, dict[str, float]]] = {}
    if teacher_score is not None:
        teacher_scores["synthetic test split"] = {
            "base": synthetic["base"],
            "fine-tuned": synthetic["fine_tuned"],
            "teacher": ir_metrics(qrels, teacher_score(queries, synthetic_runs[0], config.top_k)),
        }
    versions = {"synthetic": query_set_version(queries, qrels, list(corpus))}
    frames = {
        "synthetic test split": per_query_frame(
            "synthetic", queries, qrels, *synthetic_runs, synthetic["per_query"]
        )
    }
    context.log.info(
        "test nDCG@10: base %.4f, fine-tuned %.4f (%+.2f points)",
        synthetic["base"]["NDCG@10"],
        synthetic["fine_tuned"]["NDCG@10"],
        delta_points(synthetic),
    )
    value = {
        **_without_per_query(synthetic),
        "test_queries": len(queries),
        "test_set_version": versions["synthetic"],
        "beir_dir": str(folder.resolve()),
        "base_model": finetuned_model["base_model"],
        "finetuned_model": finetuned_model["path"],
        # What chose the fine-tuned model: an honest reading of the figures below needs it.
        "model_selected_on": finetuned_model.get("model_selected_on", ""),
        "labelled_queries_used_for_selection": finetuned_model.get(
            "labelled_queries_used_for_selection", False
        ),
    }
    # Per question generator: with recipe auto the test split holds every generator's questions,
    # the model trained on the chosen recipe's; this shows which kinds of question gained.
    by_generator = _by_generator(frames["synthetic test split"], qa_splits)
    value["synthetic_by_generator"] = by_generator
    metadata = {
        "ndcg10_by_generator": dg.MetadataValue.md(_by_generator_markdown(by_generator)),
        **{
            f"ndcg10_delta_points[{g}]@synthetic-{versions['synthetic']}": dg.MetadataValue.float(
                m["delta_points"]
            )
            for g, m in by_generator.items()
        },
        "metrics": dg.MetadataValue.md(synthetic["markdown"]),
        **{f"fine_tuned_{k}": v for k, v in tuned_encoder.metadata().items()},
        "test_queries": len(queries),
        "synthetic_set_version": versions["synthetic"],
        **_summary_metadata("", synthetic),
        **_metric_metadata("synthetic", versions["synthetic"], synthetic),
        **_movers_metadata("", frames["synthetic test split"]),
    }
    if labelled is not None:
        chunk_document = dict(zip(document_chunks["chunk_id"], document_chunks["doc_path"], strict=True))
        # Several chunks of one document collapse into one hit: rank chunks 10x deeper than
        # the documents kept, so that top_k distinct documents are still there.
        depth = min(len(corpus), 10 * config.top_k)
        base_chunks = run("base", labelled.queries, depth)
        labelled_runs = (
            document_run(base_chunks, chunk_document, config.top_k),
            document_run(run("fine_tuned", labelled.queries, depth), chunk_document, config.top_k),
        )
        real = compare_runs(labelled.qrels, *labelled_runs)
        if teacher_score is not None:
            # a cross-encoder reranks the base's top_k chunks (as deep a pool as a reranker gets)
            pool = {q: dict(list(hits.items())[: config.top_k]) for q, hits in base_chunks.items()}
            teacher_chunks = teacher_score(labelled.queries, pool, depth)
            teacher_scores["labelled queries"] = {
                "base": real["base"],
                "fine-tuned": real["fine_tuned"],
                "teacher": ir_metrics(
                    labelled.qrels, document_run(teacher_chunks, chunk_document, config.top_k)
                ),
            }
        versions["labelled"] = query_set_version(labelled.queries, labelled.qrels, list(corpus))
        frames["labelled queries"] = per_query_frame(
            "labelled", labelled.queries, labelled.qrels, *labelled_runs, real["per_query"]
        )
        evaluations["labelled queries"] = real
        context.log.info(
            "labelled nDCG@10 (%d queries): base %.4f, fine-tuned %.4f (%+.2f points)",
            len(labelled.queries),
            real["base"]["NDCG@10"],
            real["fine_tuned"]["NDCG@10"],
            delta_points(real),
        )
        value["labelled"] = {
            **_without_per_query(real),
            "set_version": versions["labelled"],
            "queries": len(labelled.queries),
            "source": labelled.source,
            "fingerprint": labelled.fingerprint,
            "skipped": labelled.skipped,
        }
        metadata.update(
            {
                "labelled_metrics": dg.MetadataValue.md(real["markdown"]),
                "labelled_queries": len(labelled.queries),
                "labelled_source": dg.MetadataValue.path(labelled.source),
                "labelled_fingerprint": labelled.fingerprint,
                "labelled_skipped": counts_table(labelled.skipped),
                "labelled_unknown_documents": ", ".join(labelled.unknown_documents) or "none",
                "labelled_set_version": versions["labelled"],
                **_summary_metadata("labelled_", real),
                **_metric_metadata("labelled", versions["labelled"], real),
                **_movers_metadata("labelled_", frames["labelled queries"]),
            }
        )
    if teacher_scores:
        value["teacher"] = {
            "name": teacher.name_or_path,
            "kind": teacher.load().kind,
            **{name: sides["teacher"] for name, sides in teacher_scores.items()},
        }
        metadata["teacher_vs_models"] = dg.MetadataValue.md(_teacher_markdown(teacher_scores))
        metadata["teacher"] = teacher.name_or_path
        for name, key in (("synthetic test split", "synthetic"), ("labelled queries", "labelled")):
            if name in teacher_scores:
                at = f"@{key}-{versions[key]}"
                teacher_ndcg = teacher_scores[name]["teacher"]["NDCG@10"]
                metadata[f"ndcg10_teacher{at}"] = dg.MetadataValue.float(round(teacher_ndcg, 4))
                metadata[f"ndcg10_student_minus_teacher_points{at}"] = dg.MetadataValue.float(
                    round((teacher_scores[name]["fine-tuned"]["NDCG@10"] - teacher_ndcg) * 100, 2)
                )
    # Forgetting: both models on a small general-domain set that ships with Python.
    general_set = general_retrieval_set()
    general_scores = {
        side: ir_metrics(
            general_set.qrels,
            retrieve(model, general_set.corpus, general_set.queries, top_k=config.top_k, embed=embed),
        )["NDCG@10"]
        for side, (model, _, embed) in sides.items()
    }
    forgetting = (general_scores["base"] - general_scores["fine_tuned"]) * 100
    general = {**general_scores, "queries": len(general_set.queries), "documents": len(general_set.corpus)}
    general.update(version=general_set.version, forgetting_points=round(forgetting, 2))
    value["general_domain"] = general
    at = f"@general-{general_set.version}"
    metadata.update(
        {
            f"ndcg10_base{at}": dg.MetadataValue.float(round(general_scores["base"], 4)),
            f"ndcg10_fine_tuned{at}": dg.MetadataValue.float(round(general_scores["fine_tuned"], 4)),
            f"forgetting_points{at}": dg.MetadataValue.float(round(forgetting, 2)),
        }
    )
    # Per-query results and the report, kept per run beside the other artifacts.
    out_dir = store.path("reports", context.run_id, "retrieval_eval")
    per_query_path = out_dir / "per_query.parquet"
    per_query_path.parent.mkdir(parents=True, exist_ok=True)
    pl.concat(list(frames.values())).write_parquet(per_query_path)
    png = evaluation_report_png(evaluations, frames, general=general)
    value.update(
        per_query_path=str(per_query_path.resolve()), report_path=str((out_dir / "report.png").resolve())
    )
    metadata.update(
        {
            **image(png, out_dir / "report.png", "report"),
            "per_query_path": dg.MetadataValue.path(str(per_query_path.resolve())),
        }
    )
    # Runs can be filtered by the test sets they were scored on (Runs page, tag filter).
    context.instance.add_run_tags(
        context.run_id, {f"embed_assets/{name}_set_version": v for name, v in versions.items()}
    )
    # The gate: every gate metric of every evaluation within tolerance of the base model.
    gate = no_regression(evaluations, config.gate_metrics, config.tolerance_points)
    deltas, regressions, failed = gate.deltas, gate.regressions, gate.failed
    metadata.update(
        {
            "beir_dir": dg.MetadataValue.path(str(folder.resolve())),
            "finetuned_model_path": dg.MetadataValue.path(finetuned_model["path"]),
            "training_examples_version": finetuned_model.get("training_examples_version", ""),
            "model_selected_on": value["model_selected_on"],
            "labelled_queries_used_for_selection": value["labelled_queries_used_for_selection"],
            **stage_metrics(start),
        }
    )
    return dg.MaterializeResult(
        value=value,
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="no_regression_vs_base",
                passed=not failed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    **{
                        f"{metric.lower().replace('@', '')}_delta_points_{name.replace(' ', '_')}": round(
                            d, 2
                        )
                        for (name, metric), d in deltas.items()
                    },
                    "gate_metrics": ", ".join(config.gate_metrics),
                    "tolerance_points": config.tolerance_points,
                    "regressed_on": ", ".join(failed) or "none",
                    "regressions": "; ".join(f"{n} {m} {d:+.2f}" for (n, m), d in regressions.items())
                    or "none",
                },
                description="fine-tuned must not fall below base on the gate metrics (default nDCG@10), on the "
                "synthetic test split nor on the labelled queries when given; a regressed model is never exported",
            ),
            dg.AssetCheckResult(
                check_name="general_domain_forgetting",
                passed=forgetting <= config.max_forgetting_points,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "ndcg10_base": round(general_scores["base"], 4),
                    "ndcg10_fine_tuned": round(general_scores["fine_tuned"], 4),
                    "forgetting_points": round(forgetting, 2),
                    "max_forgetting_points": config.max_forgetting_points,
                    "queries": len(general_set.queries),
                    "documents": len(general_set.corpus),
                    "set_version": general_set.version,
                },
                description=f"general-domain nDCG@10 {general_scores['base']:.4f} -> "
                f"{general_scores['fine_tuned']:.4f}: "
                + (f"forgot {forgetting:.2f} points" if forgetting > 0 else "no forgetting")
                + f" (warns above {config.max_forgetting_points})",
            ),
        ],
    )
