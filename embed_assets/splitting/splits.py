"""Grouped train/val/test splitting and BEIR-format export.

Questions are split by **source document**, not by row: a question generated
from a document lands in the same split as every other question from it, so
the test set measures generalisation to unseen documents rather than recall
of the training chunks. Multi-hop questions whose hops span documents are
grouped by the union of their documents (union-find), so no document ever feeds
two splits.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass(frozen=True)
class SplitConfig:
    """Args:
    val_fraction / test_fraction: target share of *documents* (by question count)
        in validation and test.
    seed: shuffles the document groups.
    """

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1")


def _document_groups(doc_lists: list[list[str]]) -> list[str]:
    """Union-find over documents that share a question; returns a group key per row."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for docs in doc_lists:
        for d in docs[1:]:
            ra, rb = find(docs[0]), find(d)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return [find(docs[0]) for docs in doc_lists]


def grouped_split(qa: pl.DataFrame, config: SplitConfig | None = None) -> pl.DataFrame:
    """Add a ``split`` column (train/val/test) to ``qa``, grouped by ``doc_ids``.

    Groups are shuffled with ``config.seed`` and assigned to test, then val, until
    each split holds its target share of questions; the rest is train.
    """
    config = config or SplitConfig()
    if qa.height == 0:
        return qa.with_columns(pl.lit(None, pl.String).alias("split"))
    groups = _document_groups(qa["doc_ids"].to_list())
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    keys = sorted(sizes)
    random.Random(config.seed).shuffle(keys)
    total = qa.height
    assignment: dict[str, str] = {}
    filled = {"test": 0, "val": 0}
    targets = {"test": config.test_fraction * total, "val": config.val_fraction * total}
    for key in keys:
        # A group joins test/val only if it does not overshoot the target by more than 25%:
        # one giant group (documents chained by multi-hop questions) must not swallow the test set.
        split = next(
            (
                s
                for s in ("test", "val")
                if filled[s] < targets[s] and filled[s] + sizes[key] <= 1.25 * targets[s] + 1
            ),
            "train",
        )
        assignment[key] = split
        if split != "train":
            filled[split] += sizes[key]
    return qa.with_columns(pl.Series("split", [assignment[g] for g in groups]))


def leaked_documents(qa_with_split: pl.DataFrame) -> set[str]:
    """Documents that feed more than one split (empty when the split is clean)."""
    per_doc = (
        qa_with_split.select("doc_ids", "split")
        .explode("doc_ids")
        .group_by("doc_ids")
        .agg(pl.col("split").n_unique().alias("n"))
    )
    return set(per_doc.filter(pl.col("n") > 1)["doc_ids"].to_list())


def write_beir(
    qa: pl.DataFrame, chunks: pl.DataFrame, out_dir: str | Path, splits: tuple[str, ...] = ("test",)
) -> Path:
    """Write a BEIR folder: ``corpus.jsonl`` (all chunks), ``queries.jsonl`` (the queries
    of every split named) and ``qrels/<split>.tsv`` (relevance 1 for every positive).

    ``qa`` needs a ``split`` column (see :func:`grouped_split`). The corpus is the
    whole chunk set, not only the test chunks: production search runs over
    everything, so the evaluation must too.
    """
    out = Path(out_dir)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for row in chunks.select("chunk_id", "text").iter_rows(named=True):
            f.write(
                json.dumps({"_id": row["chunk_id"], "title": "", "text": row["text"]}, ensure_ascii=False)
                + "\n"
            )
    selected = qa.filter(pl.col("split").is_in(list(splits)))
    with (out / "queries.jsonl").open("w", encoding="utf-8") as f:
        for row in selected.select("qa_id", "question").iter_rows(named=True):
            f.write(json.dumps({"_id": row["qa_id"], "text": row["question"]}, ensure_ascii=False) + "\n")
    for split in splits:
        part = selected.filter(pl.col("split") == split)
        with (out / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qa_id, positives in zip(part["qa_id"], part["positive_chunk_ids"], strict=True):
                for cid in positives:
                    f.write(f"{qa_id}\t{cid}\t1\n")
    return out
