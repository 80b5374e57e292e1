"""Trainer options on a tiny real dataset: LoRA (merged back), Matryoshka, merge selection on validation."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl
import pytest
import torch
from sentence_transformers import SentenceTransformer

from embed_assets.models import resolve_model_path
from embed_assets.training.trainer import (
    TrainingConfig,
    ValidationSet,
    build_loss,
    full_batches,
    train_bi_encoder,
)

SETTINGS = [
    "work_mem",
    "shared_buffers",
    "max_wal_size",
    "wal_level",
    "lock_timeout",
    "statement_timeout",
    "effective_cache_size",
    "maintenance_work_mem",
    "archive_mode",
    "hot_standby",
    "fsync",
    "wal_buffers",
    "checkpoint_timeout",
    "max_connections",
    "log_min_duration_statement",
    "autovacuum_naptime",
]


def rows() -> pl.DataFrame:
    n = len(SETTINGS)
    return pl.DataFrame(
        {
            "anchor": [f"what does {s} control" for s in SETTINGS],
            "positive": [
                f"{s} is a server setting; {s} controls one aspect of the server, number {i}."
                for i, s in enumerate(SETTINGS)
            ],
            "negative_1": [
                f"{SETTINGS[(i + 1) % n]} is documented elsewhere in chapter {i}." for i in range(n)
            ],
        }
    )


def val() -> ValidationSet:
    return ValidationSet(
        queries={f"q{i}": f"{s} setting" for i, s in enumerate(SETTINGS[:6])},
        corpus={
            f"c{i}": f"{s} is a server setting; {s} controls one aspect of the server."
            for i, s in enumerate(SETTINGS)
        },
        relevant={f"q{i}": {f"c{i}"} for i in range(6)},
    )


def test_lora_adapters_are_merged_into_plain_weights(tmp_path):
    config = TrainingConfig(max_steps=2, batch_size=8, lora_rank=4, merge_weights=(0.0,), learning_rate=1e-3)
    result = train_bi_encoder("all-MiniLM-L6-v2", rows(), tmp_path / "m", config)
    tuned = SentenceTransformer(result.model_dir)
    base = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"))
    assert not [n for n, _ in tuned.named_parameters() if "lora" in n]
    tuned_q = dict(tuned.named_parameters())["0.model.encoder.layer.0.attention.self.query.weight"]
    base_q = dict(base.named_parameters())["0.model.encoder.layer.0.attention.self.query.weight"]
    assert not torch.allclose(tuned_q, base_q), "LoRA deltas must be folded into the saved weights"


def test_matryoshka_and_validation_selected_merge(tmp_path):
    config = TrainingConfig(max_steps=2, batch_size=8, matryoshka_dims=(384, 128), merge_weights=(0.0, 0.5))
    result = train_bi_encoder(
        "all-MiniLM-L6-v2", rows(), tmp_path / "m", config, val=val(), card={"data": "v1"}
    )
    assert result.base_val_ndcg10 is not None
    assert set(result.merge_candidates) == {"0.00", "0.50"}
    assert result.merge_weight in (0.0, 0.5)
    assert result.best_val_ndcg10 == max(result.merge_candidates.values())
    record = json.loads((tmp_path / "m" / "embed_assets_training.json").read_text())
    assert record["data"] == "v1" and record["training_config"]["matryoshka_dims"] == [384, 128]
    assert SentenceTransformer(result.model_dir).encode(["work_mem"]).shape == (1, 384)


def test_too_few_rows_for_a_batch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch_size=32"):
        train_bi_encoder("all-MiniLM-L6-v2", rows(), tmp_path / "m", TrainingConfig(batch_size=32))


def test_full_batches_is_the_trainers_no_repeat_rule(tmp_path):
    """40 rows are five batches of 8 by count, but their positives are only 5 texts: no batch
    of 8 can avoid repeating one, so the count is 0 and the trainer refuses, as the check must."""
    repeated = pl.DataFrame(
        {"anchor": [f"question {i}" for i in range(40)], "positive": [f"passage {i % 5}" for i in range(40)]}
    )
    assert full_batches(repeated, 8) == 0
    with pytest.raises(ValueError, match="40 rows could not fill one batch of 8 without repeating a text"):
        train_bi_encoder(
            "all-MiniLM-L6-v2", repeated, tmp_path / "m", TrainingConfig(batch_size=8, max_steps=1)
        )
    assert full_batches(rows(), 8) == 2  # 16 rows, every text distinct
    assert full_batches(rows(), 16) == 1
    assert full_batches(rows(), 32) == 0
    # 16 distinct rows plus 8 that repeat the first positive: at most one of those 8 fits a batch.
    mixed = pl.concat(
        [rows().drop("negative_1"), repeated.head(8).with_columns(positive=pl.lit(rows()["positive"][0]))]
    )
    assert full_batches(mixed, 8) == 2


def test_matryoshka_dims_wider_than_the_model_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"matryoshka_dims \[512\] exceed the model's embedding size 384"):
        train_bi_encoder(
            "all-MiniLM-L6-v2",
            rows(),
            tmp_path / "m",
            TrainingConfig(batch_size=8, matryoshka_dims=(512, 128)),
        )


@pytest.mark.parametrize(
    ("cached_loss", "negatives", "expected"),
    [(False, 1, "GISTEmbedLoss"), (True, 1, "CachedGISTEmbedLoss"), (False, 2, "CachedGISTEmbedLoss")],
)
def test_guided_in_batch_uses_the_frozen_base_as_guide(cached_loss, negatives, expected):
    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"))
    config = TrainingConfig(
        batch_size=8,
        mini_batch_size=4,
        cached_loss=cached_loss,
        scale=10.0,
        guided_in_batch=True,
        guide_margin_strategy="relative",
        guide_margin=0.05,
    )
    loss = build_loss(model, "all-MiniLM-L6-v2", config, num_negatives=negatives)
    assert type(loss).__name__ == expected
    assert loss.temperature == pytest.approx(0.1)
    assert (loss.margin_strategy, loss.margin) == ("relative", 0.05)
    # Only the query->document terms: masking changes which negatives count, not the objective.
    assert not loss.contrast_anchors and not loss.contrast_positives
    assert loss.guide is not model
    assert not loss.guide.training


def test_guided_loss_masks_a_false_negative_and_trains(tmp_path):
    """Two rows whose positives say the same thing: plain InfoNCE pushes each row's query away from
    the other's positive; the guided loss masks that pair (the base scores it above the row's own
    positive), so its loss on the batch is lower."""
    from sentence_transformers.losses import GISTEmbedLoss

    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"))
    anchors = ["how do I raise work_mem", "increase work_mem for sorts", "what is fsync"]
    positives = [
        "Raise work_mem to give each sort more memory.",
        "Raise work_mem to give each sort more memory before it spills.",
        "fsync forces writes to disk.",
    ]
    features = [model.preprocess(anchors), model.preprocess(positives)]
    guided = build_loss(
        model,
        "all-MiniLM-L6-v2",
        TrainingConfig(batch_size=3, cached_loss=False, scale=20.0, guided_in_batch=True),
    )
    plain = build_loss(model, "all-MiniLM-L6-v2", TrainingConfig(batch_size=3, cached_loss=False, scale=20.0))
    assert isinstance(guided, GISTEmbedLoss)
    with torch.no_grad():
        assert guided(features, None).item() < plain(features, None).item()

    config = TrainingConfig(
        max_steps=2,
        batch_size=8,
        cached_loss=False,
        guided_in_batch=True,
        merge_weights=(0.0,),
        learning_rate=1e-3,
    )
    result = train_bi_encoder("all-MiniLM-L6-v2", rows(), tmp_path / "m", config)
    base = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"))
    tuned = SentenceTransformer(result.model_dir)
    name = "0.model.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(dict(tuned.named_parameters())[name], dict(base.named_parameters())[name])
    record = json.loads((tmp_path / "m" / "embed_assets_training.json").read_text())
    assert record["training_config"]["guided_in_batch"] is True


def test_single_merge_weight_without_validation_is_applied(tmp_path):
    """A refit has no validation to choose with: the weight chosen earlier is applied as given."""
    settings = {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3}
    plain = train_bi_encoder(
        "all-MiniLM-L6-v2", rows(), tmp_path / "a", TrainingConfig(**settings, merge_weights=(0.0,))
    )
    merged = train_bi_encoder(
        "all-MiniLM-L6-v2", rows(), tmp_path / "b", TrainingConfig(**settings, merge_weights=(0.3,))
    )
    assert plain.merge_weight == 0.0 and merged.merge_weight == 0.3
    name = "0.model.encoder.layer.0.attention.self.query.weight"
    tuned = dict(SentenceTransformer(plain.model_dir).named_parameters())[name]
    base = dict(SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2")).named_parameters())[name]
    got = dict(SentenceTransformer(merged.model_dir).named_parameters())[name]
    assert not torch.allclose(tuned, base)
    torch.testing.assert_close(got, 0.7 * tuned + 0.3 * base, rtol=1e-5, atol=1e-6)
