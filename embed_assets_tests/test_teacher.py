"""The teacher: offline assembly, loading (cross-encoder and bi-encoder), cached scoring, the
checks that refuse a bad teacher, teacher-labelled rows and the MarginMSE loss, on real models."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import polars as pl
import pytest
import torch

from embed_assets.evaluation.retrieval import retrieve
from embed_assets.generation.template import TemplateQuestionGenerator
from embed_assets.mining.negatives import mine_hard_negatives
from embed_assets.teacher import offline
from embed_assets.teacher.evaluation import teacher_run
from embed_assets.teacher.judged import RERANK_POOL, agreement_with_source, teacher_judged_set
from embed_assets.teacher.labels import LABELS_SCHEMA, label_triples
from embed_assets.teacher.scorer import (
    SETTING,
    TeacherError,
    TeacherScoreCache,
    auc,
    detect_kind,
    load_teacher,
)
from embed_assets.training.examples import unroll_examples
from embed_assets.training.trainer import (
    TeacherMarginLoss,
    TrainingConfig,
    build_loss,
    train_bi_encoder,
    validation_ndcg10,
)
from embed_assets.training.validation import validation_set


@pytest.fixture(scope="module")
def mpnet():
    """The real offline teacher, assembled from its PyPI parts (the test extra installs them)."""
    return load_teacher("all-mpnet-base-v2")


@pytest.fixture(scope="module")
def qa(mini_chunks):
    generated = TemplateQuestionGenerator().generate(
        mini_chunks, questions_per_chunk=1, multi_hop_questions=0, seed=5
    )
    frame = generated.qa.gather_every(2)
    # every third question validates: the separation check reads the validation split
    return frame.with_columns(
        split=pl.when(pl.int_range(pl.len()) % 3 == 0).then(pl.lit("val")).otherwise(pl.lit("train"))
    )


@pytest.fixture(scope="module")
def mined(qa, base_model, mini_index):
    frame, _, _ = mine_hard_negatives(qa, base_model, mini_index)
    return frame


# --- the offline teacher -----------------------------------------------------------------------


def _split_zip(tmp_path, parts: int = 3):
    folder = tmp_path / "src" / "tiny-model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text("[]")
    (folder / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 8}')
    (folder / "desktop.ini").write_text("junk")
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.rglob("*"):
            zf.write(f, f.relative_to(folder.parent))
    data = archive.read_bytes()
    size = math.ceil(len(data) / parts)
    paths = []
    for i in range(parts):
        p = tmp_path / f"model.zip.{i + 1:03d}"
        p.write_bytes(data[i * size : (i + 1) * size])
        paths.append(p)
    return paths


def test_split_parts_are_joined_into_the_model_folder_once(tmp_path):
    parts = _split_zip(tmp_path)
    dest = offline.assemble(parts, tmp_path / "cache" / "tiny-model")
    assert (dest / "modules.json").read_text() == "[]"
    assert (dest / "1_Pooling" / "config.json").is_file()
    assert not list(dest.rglob("desktop.ini"))
    stamp = (dest / "modules.json").stat().st_mtime_ns
    for p in parts:  # a second call reads no part: the finished folder is kept as it is
        p.unlink()
    assert offline.assemble(parts, dest) == dest
    assert (dest / "modules.json").stat().st_mtime_ns == stamp
    assert [p.name for p in dest.parent.iterdir()] == ["tiny-model"]  # no temporary folder left


def test_an_assembly_cut_short_is_done_again(tmp_path):
    parts = _split_zip(tmp_path)
    dest = tmp_path / "cache" / "tiny-model"
    dest.mkdir(parents=True)
    (dest / "modules.json").write_text("half-written")  # no completion marker
    offline.assemble(parts, dest)
    assert (dest / "modules.json").read_text() == "[]"


def test_missing_parts_are_named_with_the_install_command():
    with pytest.raises(
        offline.OfflineTeacherMissingError, match=r"no-such-part-999.*embed_assets\[teacher\]"
    ):
        offline.installed_parts(["no-such-part-999"])


def test_offline_teacher_ranks_the_relevant_passage_first(mpnet):
    assert mpnet.kind == "bi-encoder" and mpnet.max_length >= 256
    scores = mpnet.score(
        ["how do I raise the connection timeout"] * 2,
        ["statement_timeout aborts any statement that takes more than the given time", "the tiger is a cat"],
    )
    assert scores[0] > scores[1] + 0.2


# --- a cross-encoder teacher, scoring and its cache ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """A CrossEncoder built from the packaged MiniLM weights (random head), saved as users' are."""
    from sentence_transformers import CrossEncoder

    from embed_assets.models import resolve_model_path

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_ce")
    CrossEncoder(resolve_model_path("all-MiniLM-L6-v2"), num_labels=1, device="cpu").save(str(path))
    return path


def test_a_classification_head_is_a_cross_encoder(tiny_cross_encoder, mpnet):
    assert detect_kind(str(tiny_cross_encoder)) == "cross-encoder"
    assert detect_kind(mpnet.path) == "bi-encoder"
    teacher = load_teacher(str(tiny_cross_encoder))
    assert teacher.kind == "cross-encoder"
    scores = teacher.score(["a question", "another"], ["a passage", "another passage"])
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))  # sigmoid probabilities


def test_scores_are_cached_by_content(tiny_cross_encoder, tmp_path):
    teacher = load_teacher(str(tiny_cross_encoder))
    cache = TeacherScoreCache(tmp_path / "scores.sqlite")
    queries, passages = ["q1", "q1", "q2"], ["p1", "p2", "p1"]
    first = cache.scores(teacher, queries, passages)
    assert (cache.computed, cache.hits) == (3, 0)
    again = TeacherScoreCache(tmp_path / "scores.sqlite")  # a rerun: a new process, the same file
    second = again.scores(teacher, [*queries, "q3"], [*passages, "p3"])
    assert (again.computed, again.hits) == (1, 3)
    np.testing.assert_allclose(second[:3], first, rtol=1e-6)


def test_a_teacher_that_scores_nan_is_refused_by_setting(tiny_cross_encoder, tmp_path):
    teacher = load_teacher(str(tiny_cross_encoder))
    with torch.no_grad():
        for name, param in teacher.model.named_parameters():
            if "classifier" in name:
                param.fill_(float("nan"))
    cache = TeacherScoreCache(tmp_path / "scores.sqlite")
    with pytest.raises(TeacherError, match=rf"{SETTING}.*non-finite"):
        cache.scores(teacher, ["q"], ["p"])
    assert cache.computed == 0  # nothing NaN was stored


def test_a_teacher_that_does_not_load_names_the_setting(tmp_path):
    with pytest.raises(TeacherError, match=rf"{SETTING}.*could not be loaded"):
        load_teacher(str(tmp_path / "no-such-model"))


def test_a_cross_encoder_reranks_the_candidates(tiny_cross_encoder, tmp_path):
    teacher = load_teacher(str(tiny_cross_encoder))
    corpus = {"d1": "alpha text", "d2": "beta text", "d3": "gamma text"}
    candidates = {"q": {"d1": 0.9, "d2": 0.5}}  # d3 is not a candidate: a reranker never sees it
    run = teacher_run(
        teacher, TeacherScoreCache(tmp_path / "s.sqlite"), corpus, {"q": "beta?"}, 10, candidates=candidates
    )
    expected = teacher.score(["beta?", "beta?"], ["alpha text", "beta text"])
    assert set(run["q"]) == {"d1", "d2"}
    assert list(run["q"]) == (["d1", "d2"] if expected[0] >= expected[1] else ["d2", "d1"])


def test_auc_is_mann_whitney():
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 2], [1, 2]) == 0.5


# --- labelling mined triples ---------------------------------------------------------------------


def test_every_mined_triple_is_labelled_and_false_negatives_counted(mpnet, mined, qa, mini_chunks, tmp_path):
    cache = TeacherScoreCache(tmp_path / "scores.sqlite")
    labels = label_triples(mined, qa, mini_chunks, mpnet, cache)
    assert dict(labels.frame.schema) == LABELS_SCHEMA
    pairs = sum(len(p) for p in mined["positive_chunk_ids"])
    assert labels.frame.height == pairs
    triples = sum(
        len(p) * len(n) for p, n in zip(mined["positive_chunk_ids"], mined["negative_chunk_ids"], strict=True)
    )
    assert labels.counts["triples"] == triples == labels.margins.size
    assert labels.counts["false_negatives"] == int((labels.margins <= 0).sum())
    assert labels.separation_auc > 0.8  # mpnet tells a question's chunk from a random one
    row = labels.frame.row(0, named=True)
    text = dict(zip(mini_chunks["chunk_id"], mini_chunks["text"], strict=True))
    question = qa.filter(pl.col("qa_id") == row["qa_id"])["question"][0]
    direct = mpnet.score([question], [text[row["positive_chunk_id"]]])[0]
    assert row["teacher_positive"] == pytest.approx(float(direct), abs=1e-5)
    # a rerun scores nothing again
    rerun = TeacherScoreCache(tmp_path / "scores.sqlite")
    label_triples(mined, qa, mini_chunks, mpnet, rerun)
    assert rerun.computed == 0 and rerun.hits > 0


def test_a_teacher_that_does_not_separate_is_refused_with_its_auc(mpnet, mined, qa, mini_chunks, tmp_path):
    with pytest.raises(TeacherError, match=rf"{SETTING}.*AUC 0\.\d+ \(needs > 0.999"):
        label_triples(mined, qa, mini_chunks, mpnet, TeacherScoreCache(tmp_path / "s.sqlite"), min_auc=0.999)


def test_a_teacher_that_reads_too_few_tokens_is_refused(mined, qa, mini_chunks, tmp_path):
    short = load_teacher("all-mpnet-base-v2", max_length=16)
    with pytest.raises(TeacherError, match=r"reads at most 16 tokens.*chunk_tokens"):
        label_triples(mined, qa, mini_chunks, short, TeacherScoreCache(tmp_path / "s.sqlite"))


# --- choices judged by the teacher -------------------------------------------------------------


@pytest.fixture(scope="module")
def val_set(qa, mini_chunks):
    return validation_set(qa, mini_chunks, distractors=20, seed=0)


def test_the_teacher_judges_its_own_ranking_perfect(mpnet, val_set, tmp_path):
    """Relevance becomes the teacher's top k, so the teacher itself scores nDCG@10 = 1 and the
    generator's source chunk no longer decides what is relevant."""
    judged = teacher_judged_set(val_set, mpnet, TeacherScoreCache(tmp_path / "s.sqlite"), top_k=3)
    assert judged.corpus is val_set.corpus and set(judged.queries) == set(val_set.queries)
    assert all(len(r) == 3 and r <= set(val_set.corpus) for r in judged.relevant.values())
    assert validation_ndcg10(mpnet.model, judged) == pytest.approx(1.0)
    assert 0.5 < agreement_with_source(judged, val_set) <= 1.0  # mostly finds the source chunk too
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        teacher_judged_set(val_set, mpnet, TeacherScoreCache(tmp_path / "s.sqlite"), top_k=0)


def test_a_cross_encoder_judges_the_base_models_candidates(tiny_cross_encoder, val_set, base_model, tmp_path):
    teacher = load_teacher(str(tiny_cross_encoder))
    cache = TeacherScoreCache(tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="base_candidates"):
        teacher_judged_set(val_set, teacher, cache, top_k=2)
    depths: list[int] = []

    def base_candidates(depth: int) -> dict:
        depths.append(depth)
        return retrieve(base_model, val_set.corpus, val_set.queries, 4)  # a pool of 4 per question

    judged = teacher_judged_set(val_set, teacher, cache, top_k=2, base_candidates=base_candidates)
    pool = retrieve(base_model, val_set.corpus, val_set.queries, 4)
    assert depths == [RERANK_POOL]
    assert all(len(judged.relevant[q]) == 2 and judged.relevant[q] <= set(pool[q]) for q in judged.queries)
    assert cache.computed == 4 * len(val_set.queries)  # every candidate pair scored once, then cached


def test_rows_keep_only_negatives_the_teacher_scores_below_the_positive():
    mined = pl.DataFrame(
        {
            "qa_id": ["a", "b"],
            "question": ["qa", "qb"],
            "positive_chunk_ids": [["p"], ["p"]],
            "negative_chunk_ids": [["n1", "n2", "n3"], ["n1", "n2"]],
        }
    )
    teacher = pl.DataFrame(
        {
            "qa_id": ["a", "b"],
            "positive_chunk_id": ["p", "p"],
            "teacher_positive": [0.8, 0.3],
            "negative_chunk_ids": [["n1", "n2", "n3"], ["n1", "n2"]],
            "teacher_negatives": [[0.9, 0.5, 0.1], [0.3, 0.6]],  # a/n1 is a false negative; b has no true one
        },
        schema=LABELS_SCHEMA,
    )
    text = {c: c.upper() for c in ("p", "n1", "n2", "n3")}
    rows = unroll_examples(mined, text, 2, teacher=teacher)
    assert rows["qa_id"].to_list() == ["a"]  # b: every negative scored at or above its positive
    row = rows.row(0, named=True)
    assert (row["negative_1"], row["negative_2"]) == ("N2", "N3")
    assert row["label"] == pytest.approx([0.3, 0.7])
    assert row["false_negatives_dropped"] == 1


# --- training on the teacher's margins -----------------------------------------------------------


def _labelled_rows(n: int = 16) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "anchor": [f"what does setting number {i} control" for i in range(n)],
            "positive": [f"setting number {i} controls the size of buffer {i}" for i in range(n)],
            "negative_1": [f"an unrelated paragraph about topic {i}" for i in range(n)],
            "label": [[0.4] for _ in range(n)],
        }
    )


@pytest.mark.parametrize("teacher_loss,in_batch", [("margin_mse+in_batch", True), ("margin_mse", False)])
def test_labelled_rows_train_with_the_teacher_margin_loss(base_model, teacher_loss, in_batch):
    config = TrainingConfig(teacher_loss=teacher_loss)
    loss = build_loss(base_model, "all-MiniLM-L6-v2", config, num_negatives=1, teacher_labels=True)
    assert isinstance(loss, TeacherMarginLoss) and (loss.in_batch is not None) == in_batch
    with pytest.raises(ValueError, match="at least one negative"):
        build_loss(base_model, "all-MiniLM-L6-v2", config, num_negatives=0, teacher_labels=True)


def test_margin_mse_moves_the_student_towards_the_teachers_margin(tmp_path, base_model):
    rows = _labelled_rows()
    from embed_assets.models import encode

    def margin(model) -> float:
        q, p, n = (encode(model, rows[c].to_list()) for c in ("anchor", "positive", "negative_1"))
        return float(np.mean((q * p).sum(1) - (q * n).sum(1)))

    before = margin(base_model)
    target = before + 0.3  # a teacher that wants the positives further ahead
    labelled = rows.with_columns(label=pl.lit([target]).cast(pl.List(pl.Float32)))
    config = TrainingConfig(
        max_steps=6, batch_size=8, learning_rate=1e-4, teacher_loss="margin_mse", merge_weights=(0.0,)
    )
    result = train_bi_encoder("all-MiniLM-L6-v2", labelled, tmp_path / "m", config)
    assert result.steps == 6
    from embed_assets.models import load_model

    after = margin(load_model(str(tmp_path / "m")))
    assert after > before + 0.05
