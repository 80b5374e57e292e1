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
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from embed_assets.hashing import content_hash


@dataclass(frozen=True)
class SplitConfig:
    """Args:
    val_fraction / test_fraction: expected share of documents (document groups) in validation
        and test.
    seed: salts the hash that places each document group.
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


def _position(key: str, seed: int) -> float:
    """A document group's place in [0, 1): a hash of the seed and its key, the same in every run."""
    return int(content_hash(f"{seed}:{key}", 15), 16) / 16**15


def grouped_split(qa: pl.DataFrame, config: SplitConfig | None = None) -> pl.DataFrame:
    """Add a ``split`` column (train/val/test) to ``qa``, grouped by ``doc_ids``.

    Each document group (documents joined by multi-hop questions) gets a place in [0, 1) from a
    seeded hash of its key, its smallest document id: below ``test_fraction`` it is test, below
    ``test_fraction + val_fraction`` val, else train. The place depends on nothing else, so when
    documents are added or removed the others keep their split (unless a group gains or loses its
    key document, or a guard below applies): a model trained on an earlier run's train split
    (``warm_start``) has not seen the documents of the new test split. A seeded shuffle of all
    groups, as this function did before, re-deals every document when one is added.

    Two guards, for small or lopsided corpora: a group with more questions than 1.25x a split's
    target share (plus one) is never put in that split, so one giant group (documents chained by
    multi-hop questions) cannot swallow the test set; and with three or more groups, an empty split
    takes a group from the largest one (train its highest-placed, test and val its lowest-placed), so
    none is empty by chance.
    """
    config = config or SplitConfig()
    if qa.height == 0:
        return qa.with_columns(pl.lit(None, pl.String).alias("split"))
    groups = _document_groups(qa["doc_ids"].to_list())
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    total = qa.height
    # Most questions one group may bring into test / val (the giant-group guard).
    cap = {"test": 1.25 * config.test_fraction * total + 1, "val": 1.25 * config.val_fraction * total + 1}
    # A group goes where its key document (smallest id) goes: a document joining or leaving a
    # multi-hop group moves the group only when it is, or was, that document. (The lowest place of
    # the group's documents would be as stable but would send large groups to test more often.)
    place = {key: _position(key, config.seed) for key in sizes}
    assignment: dict[str, str] = {}
    for key, u in place.items():
        split = "train"
        if u < config.test_fraction:
            split = "test" if sizes[key] <= cap["test"] else "train"
        elif u < config.test_fraction + config.val_fraction:
            split = "val" if sizes[key] <= cap["val"] else "train"
        assignment[key] = split
    if len(sizes) >= 3:
        order = sorted(place, key=place.get)
        for split, fraction in (("train", 1.0), ("test", config.test_fraction), ("val", config.val_fraction)):
            if fraction == 0 or split in assignment.values():
                continue
            members = {s: [k for k in order if assignment[k] == s] for s in ("train", "test", "val")}
            donor = max(members, key=lambda s: len(members[s]))
            movable = [k for k in members[donor] if split == "train" or sizes[k] <= cap[split]]
            if len(members[donor]) > 1 and movable:
                # Train takes the donor's highest-placed group, test and val its lowest-placed one.
                assignment[movable[-1] if split == "train" else movable[0]] = split
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
