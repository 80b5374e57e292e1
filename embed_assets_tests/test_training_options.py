"""Trainer options on a tiny real dataset: LoRA (merged back), Matryoshka, merge selection on validation."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl
import pytest
import torch
from sentence_transformers import SentenceTransformer

from embed_assets.models import resolve_model_path
from embed_assets.training.trainer import TrainingConfig, ValidationSet, train_bi_encoder

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
