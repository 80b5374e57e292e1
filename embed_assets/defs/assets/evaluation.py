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
from embed_assets.defs.resources import HOME_POOL, ArtifactStoreResource, BaseModelResource, TeacherResource
from embed_assets.evaluation.labelled import LabelledQueries, labelled_queries_of, without_queries_that_chose
from embed_assets.evaluation.metrics import (
    DEFAULT_METRICS,
    delta_points,
    markdown_table,
)
from embed_assets.evaluation.report import (
    evaluation_report_png,
    metric_slug,
    top_movers,
)
from embed_assets.evaluation.retrieval import load_beir
from embed_assets.evaluation.stage import LABELLED, SET_KEYS, SYNTHETIC, Evaluation, Side, evaluate_models
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
    pool=HOME_POOL,
    group_name="evaluation",
    code_version=code_version(
        __name__,
        "embed_assets.evaluation.metrics",
        "embed_assets.evaluation.retrieval",
        "embed_assets.evaluation.labelled",
        "embed_assets.evaluation.gate",
        "embed_assets.evaluation.stage",
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
    labelled = _labelled_queries(context, config, source_documents, finetuned_model)
    sides, encoder = _model_sides(finetuned_model, base_chunk_index, base_model, store, corpus)
    evaluation = evaluate_models(
        sides,
        corpus,
        queries,
        qrels,
        top_k=config.top_k,
        gate_metrics=config.gate_metrics,
        tolerance_points=config.tolerance_points,
        labelled=labelled,
        chunk_document=dict(zip(document_chunks["chunk_id"], document_chunks["doc_path"], strict=True)),
        teacher_score=_teacher_side(teacher, store, base_chunk_index, corpus),
    )
    _log_evaluation(context, evaluation)
    value = _evaluation_value(evaluation, qa_splits, folder, finetuned_model, labelled, teacher)
    metadata = {
        **{f"fine_tuned_{k}": v for k, v in encoder.items()},
        **_evaluation_metadata(evaluation, value, labelled),
        **_report(context, store, evaluation, value),
        **_inputs_metadata(folder, finetuned_model, value),
        **stage_metrics(start),
    }
    # Runs can be filtered by the test sets they were scored on (Runs page, tag filter).
    context.instance.add_run_tags(
        context.run_id,
        {f"embed_assets/{SET_KEYS[name]}_set_version": r.version for name, r in evaluation.sets.items()},
    )
    return dg.MaterializeResult(value=value, metadata=metadata, check_results=_checks(evaluation, config))


def _log_evaluation(context: dg.AssetExecutionContext, evaluation: Evaluation) -> None:
    """One log line per query set: base and fine-tuned nDCG@10, and the gain."""
    for name, result in evaluation.sets.items():
        context.log.info(
            "%s nDCG@10 (%d queries): base %.4f, fine-tuned %.4f (%+.2f points)",
            name,
            result.queries,
            result.comparison["base"]["NDCG@10"],
            result.comparison["fine_tuned"]["NDCG@10"],
            delta_points(result.comparison),
        )


def _inputs_metadata(folder: Path, finetuned_model: dict, value: dict) -> dict:
    """What was scored: the BEIR folder, the fine-tuned model, its training data and what chose it."""
    return {
        "beir_dir": dg.MetadataValue.path(str(folder.resolve())),
        "finetuned_model_path": dg.MetadataValue.path(finetuned_model["path"]),
        "training_examples_version": finetuned_model.get("training_examples_version", ""),
        "model_selected_on": value["model_selected_on"],
        "labelled_queries_used_for_selection": value["labelled_queries_used_for_selection"],
    }


def _labelled_queries(
    context: dg.AssetExecutionContext,
    config: RetrievalEvalConfig,
    source_documents: pl.DataFrame,
    finetuned_model: dict,
) -> LabelledQueries | None:
    """The labelled queries to score on (None without), less those that chose the model."""
    if not config.labelled_queries_dir:
        return None
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
    return labelled


def _model_sides(
    finetuned_model: dict,
    base_chunk_index: dict,
    base_model: BaseModelResource,
    store: ArtifactStoreResource,
    corpus: dict[str, str],
) -> tuple[dict[str, Side], dict]:
    """Base and fine-tuned, each with its vectors of ``corpus``; and how the fine-tuned encodes.

    Each model's corpus embeddings are computed once and serve every query set. The base model's
    are already in the LanceDB index (same model, same chunk texts), and its query vectors in the
    index's embedding cache; the fine-tuned model's are cached by chunk content too, so evaluating
    again (labelled queries added, another top_k) embeds nothing twice."""
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
    sides = {
        "base": Side(base, base_vectors, base_embed),
        "fine_tuned": Side(tuned, tuned_vectors, partial(tuned_cache.text_vectors, model=tuned)),
    }
    return sides, tuned_encoder.metadata()


def _teacher_scores(evaluation: Evaluation) -> dict[str, dict[str, dict[str, float]]]:
    """Per query set that the teacher answered: base, fine-tuned and teacher metrics."""
    return {
        name: {"base": r.comparison["base"], "fine-tuned": r.comparison["fine_tuned"], "teacher": r.teacher}
        for name, r in evaluation.sets.items()
        if r.teacher is not None
    }


def _evaluation_value(
    evaluation: Evaluation,
    qa_splits: pl.DataFrame,
    folder: Path,
    finetuned_model: dict,
    labelled: LabelledQueries | None,
    teacher: TeacherResource,
) -> dict:
    """The asset's value: every figure, what was scored and what chose the model."""
    synthetic = evaluation.sets[SYNTHETIC]
    value = {
        **_without_per_query(synthetic.comparison),
        "test_queries": synthetic.queries,
        "test_set_version": synthetic.version,
        "beir_dir": str(folder.resolve()),
        "base_model": finetuned_model["base_model"],
        "finetuned_model": finetuned_model["path"],
        # What chose the fine-tuned model: an honest reading of the figures below needs it.
        "model_selected_on": finetuned_model.get("model_selected_on", ""),
        "labelled_queries_used_for_selection": finetuned_model.get(
            "labelled_queries_used_for_selection", False
        ),
        # Per question generator: with recipe auto the test split holds every generator's questions,
        # the model trained on the chosen recipe's; this shows which kinds of question gained.
        "synthetic_by_generator": _by_generator(synthetic.frame, qa_splits),
        "general_domain": evaluation.general,
    }
    if labelled is not None:
        real = evaluation.sets[LABELLED]
        value["labelled"] = {
            **_without_per_query(real.comparison),
            "set_version": real.version,
            "queries": len(labelled.queries),
            "source": labelled.source,
            "fingerprint": labelled.fingerprint,
            "skipped": labelled.skipped,
        }
    if teacher_scores := _teacher_scores(evaluation):
        value["teacher"] = {
            "name": teacher.name_or_path,
            "kind": teacher.load().kind,
            **{name: sides["teacher"] for name, sides in teacher_scores.items()},
        }
    return value


def _evaluation_metadata(evaluation: Evaluation, value: dict, labelled: LabelledQueries | None) -> dict:
    """Tables to read and numbers Dagster plots across runs, per query set."""
    synthetic = evaluation.sets[SYNTHETIC]
    by_generator = value["synthetic_by_generator"]
    metadata = {
        "ndcg10_by_generator": dg.MetadataValue.md(_by_generator_markdown(by_generator)),
        **{
            f"ndcg10_delta_points[{g}]@synthetic-{synthetic.version}": dg.MetadataValue.float(
                m["delta_points"]
            )
            for g, m in by_generator.items()
        },
        "metrics": dg.MetadataValue.md(synthetic.comparison["markdown"]),
        "test_queries": value["test_queries"],
        "synthetic_set_version": synthetic.version,
        **_summary_metadata("", synthetic.comparison),
        **_metric_metadata("synthetic", synthetic.version, synthetic.comparison),
        **_movers_metadata("", synthetic.frame),
    }
    if labelled is not None:
        real = evaluation.sets[LABELLED]
        metadata.update(
            {
                "labelled_metrics": dg.MetadataValue.md(real.comparison["markdown"]),
                "labelled_queries": len(labelled.queries),
                "labelled_source": dg.MetadataValue.path(labelled.source),
                "labelled_fingerprint": labelled.fingerprint,
                "labelled_skipped": counts_table(labelled.skipped),
                "labelled_unknown_documents": ", ".join(labelled.unknown_documents) or "none",
                "labelled_set_version": real.version,
                **_summary_metadata("labelled_", real.comparison),
                **_metric_metadata("labelled", real.version, real.comparison),
                **_movers_metadata("labelled_", real.frame),
            }
        )
    if teacher_scores := _teacher_scores(evaluation):
        metadata["teacher_vs_models"] = dg.MetadataValue.md(_teacher_markdown(teacher_scores))
        metadata["teacher"] = value["teacher"]["name"]
        for name, scores in teacher_scores.items():
            at = f"@{SET_KEYS[name]}-{evaluation.sets[name].version}"
            teacher_ndcg = scores["teacher"]["NDCG@10"]
            metadata[f"ndcg10_teacher{at}"] = dg.MetadataValue.float(round(teacher_ndcg, 4))
            metadata[f"ndcg10_student_minus_teacher_points{at}"] = dg.MetadataValue.float(
                round((scores["fine-tuned"]["NDCG@10"] - teacher_ndcg) * 100, 2)
            )
    general, at = evaluation.general, f"@general-{evaluation.general['version']}"
    metadata[f"ndcg10_base{at}"] = dg.MetadataValue.float(round(general["base"], 4))
    metadata[f"ndcg10_fine_tuned{at}"] = dg.MetadataValue.float(round(general["fine_tuned"], 4))
    metadata[f"forgetting_points{at}"] = dg.MetadataValue.float(general["forgetting_points"])
    return metadata


def _report(
    context: dg.AssetExecutionContext, store: ArtifactStoreResource, evaluation: Evaluation, value: dict
) -> dict:
    """Per-query results and the report chart, kept per run beside the other artifacts; their
    paths go into ``value`` and the metadata returned."""
    out_dir = store.path("reports", context.run_id, "retrieval_eval")
    per_query_path = out_dir / "per_query.parquet"
    per_query_path.parent.mkdir(parents=True, exist_ok=True)
    frames = {name: r.frame for name, r in evaluation.sets.items()}
    pl.concat(list(frames.values())).write_parquet(per_query_path)
    comparisons = {name: r.comparison for name, r in evaluation.sets.items()}
    png = evaluation_report_png(comparisons, frames, general=evaluation.general)
    value.update(
        per_query_path=str(per_query_path.resolve()), report_path=str((out_dir / "report.png").resolve())
    )
    return {
        **image(png, out_dir / "report.png", "report"),
        "per_query_path": dg.MetadataValue.path(str(per_query_path.resolve())),
    }


def _checks(evaluation: Evaluation, config: RetrievalEvalConfig) -> list[dg.AssetCheckResult]:
    """The blocking no-regression gate and the general-domain forgetting warning."""
    gate, general, forgetting = evaluation.gate, evaluation.general, evaluation.forgetting_points
    return [
        dg.AssetCheckResult(
            check_name="no_regression_vs_base",
            passed=gate.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                **{
                    f"{metric.lower().replace('@', '')}_delta_points_{name.replace(' ', '_')}": round(d, 2)
                    for (name, metric), d in gate.deltas.items()
                },
                "gate_metrics": ", ".join(config.gate_metrics),
                "tolerance_points": config.tolerance_points,
                "regressed_on": ", ".join(gate.failed) or "none",
                "regressions": "; ".join(f"{n} {m} {d:+.2f}" for (n, m), d in gate.regressions.items())
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
                "ndcg10_base": round(general["base"], 4),
                "ndcg10_fine_tuned": round(general["fine_tuned"], 4),
                "forgetting_points": round(forgetting, 2),
                "max_forgetting_points": config.max_forgetting_points,
                "queries": general["queries"],
                "documents": general["documents"],
                "set_version": general["version"],
            },
            description=f"general-domain nDCG@10 {general['base']:.4f} -> {general['fine_tuned']:.4f}: "
            + (f"forgot {forgetting:.2f} points" if forgetting > 0 else "no forgetting")
            + f" (warns above {config.max_forgetting_points})",
        ),
    ]
