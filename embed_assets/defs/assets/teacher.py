"""Stage 5b: the teacher's scores of every mined (question, positive, negative) triple (GPL)."""

import time

import dagster as dg
import numpy as np
import polars as pl

from embed_assets.defs.metadata import counts_table, histogram, image, preview, stage_metrics
from embed_assets.defs.resources import HOME_POOL, ArtifactStoreResource, TeacherResource
from embed_assets.evaluation.report import overlaid_distributions_png
from embed_assets.lineage import code_version, data_version
from embed_assets.teacher.labels import TeacherLabels, empty_labels, label_triples
from embed_assets.teacher.scorer import Teacher, TeacherScoreCache


def teacher_cache(store: ArtifactStoreResource) -> TeacherScoreCache:
    """The artifact home's teacher-score cache (shared by labelling and evaluation)."""
    return TeacherScoreCache(store.path("teacher", "scores.sqlite"))


@dg.asset(
    pool=HOME_POOL,
    group_name="mining",
    kinds={"pytorch", "polars"},
    code_version=code_version(__name__, "embed_assets.teacher.labels", "embed_assets.teacher.scorer"),
    description="The teacher's score of every mined (question, positive) and (question, negative) pair: "
    "training drops negatives it scores at or above their positive and fits the student's margins to its "
    "margins (MarginMSE, GPL). Scores are cached by content hash; without a teacher (the default, 'none') "
    "this is empty and training uses the generated pairs alone.",
)
def teacher_labels(
    context: dg.AssetExecutionContext,
    mined_negatives: pl.DataFrame,
    qa_splits: pl.DataFrame,
    document_chunks: pl.DataFrame,
    teacher: TeacherResource,
    store: ArtifactStoreResource,
) -> dg.MaterializeResult[pl.DataFrame]:
    start = time.perf_counter()
    if not teacher.enabled:
        labels = empty_labels()
        return dg.MaterializeResult(
            value=labels,
            data_version=dg.DataVersion(data_version(labels, {"teacher": "none"})),
            metadata={"teacher": "none", "triples": 0, **stage_metrics(start)},
        )
    model = teacher.load().with_embedding_cache(store.path("lancedb"))
    cache = teacher_cache(store)
    try:
        result = label_triples(
            mined_negatives, qa_splits, document_chunks, model, cache, min_auc=teacher.min_auc
        )
    finally:
        cache.close()
    _log_labels(context, teacher.name_or_path, model, result)
    return dg.MaterializeResult(
        value=result.frame,
        data_version=dg.DataVersion(data_version(result.frame, {"teacher": model.key})),
        metadata={
            **_label_metadata(teacher.name_or_path, model, result),
            **_score_plots(model, result, store, context.run_id),
            "preview": preview(result.frame.drop("qa_id")),
            **stage_metrics(start),
        },
    )


def _log_labels(context: dg.AssetExecutionContext, name: str, model: Teacher, result: TeacherLabels) -> None:
    """One log line: what the teacher scored, what came from its cache, how well it separates."""
    counts = result.counts
    context.log.info(
        "teacher %s (%s): %d triples, %d scored, %d from cache, %d false negatives, separation AUC %.3f",
        name,
        model.kind,
        counts["triples"],
        counts["pairs_scored"],
        counts["pairs_from_cache"],
        counts["false_negatives"],
        result.separation_auc,
    )


def _label_metadata(name: str, model: Teacher, result: TeacherLabels) -> dict:
    """The teacher, its counters, how well it separates positives from negatives, and its margins."""
    margins, counts = result.margins, result.counts
    return {
        "teacher": name,
        "teacher_kind": model.kind,
        "teacher_key": model.key,
        "teacher_max_length": model.max_length,
        "separation_auc": round(result.separation_auc, 4),
        "sampled_chunks_longer_than_teacher_reads_share": round(result.truncated_share, 4),
        "triples": counts["triples"],
        "false_negatives": counts["false_negatives"],
        "false_negative_share": round(counts["false_negatives"] / max(counts["triples"], 1), 4),
        "pairs_scored": counts["pairs_scored"],
        "pairs_from_cache": counts["pairs_from_cache"],
        "counts": counts_table(counts, key="counter"),
        "margin_mean": round(float(margins.mean()), 4) if margins.size else 0.0,
        "margins": histogram(margins, label="teacher margin (positive - negative)"),
    }


def _score_plots(model: Teacher, result: TeacherLabels, store: ArtifactStoreResource, run_id: str) -> dict:
    """The teacher's scores of positives and negatives, and its margins, as plots in the run's reports."""
    frame, margins = result.frame, result.margins
    pos = frame["teacher_positive"].to_numpy()
    neg = np.asarray(frame["teacher_negatives"].explode().drop_nulls().to_numpy(), dtype=float)
    return {
        **image(
            overlaid_distributions_png(
                {"positives": pos, "mined negatives": neg},
                xlabel=f"teacher score ({'sigmoid' if model.kind == 'cross-encoder' else 'cosine'})",
                title="teacher scores: margins left of the positives' scores are false negatives",
            ),
            store.path("reports", run_id, "teacher_labels", "scores.png"),
            "score_distributions",
        ),
        **image(
            overlaid_distributions_png(
                {"margins": margins},
                xlabel="teacher margin (positive - negative); at or below 0: dropped as a false negative",
                title="teacher score margins",
            ),
            store.path("reports", run_id, "teacher_labels", "margins.png"),
            "margin_distribution",
        ),
    }
