"""The ``structure`` question-generator backend through Dagster, up to the training rows.

Title questions must train on chunk text without its title header (positive and negatives
alike), while the run stays model-free: no LLM call, no endpoint.
"""

from __future__ import annotations

import dagster as dg

from embed_assets.defs.definitions import all_assets, build_resources
from embed_assets.defs.resources import QuestionGeneratorResource
from embed_assets.generation.structure import StructureQuestionGenerator, clean_title


def materialize_training_rows(corpus_dir, root, **training_examples):
    """Materialize up to ``training_examples`` with the structure backend on ``corpus_dir``."""
    return dg.materialize(
        all_assets,
        selection=dg.AssetSelection.assets("training_examples").upstream(),
        run_config={
            "ops": {
                "source_documents": {"config": {"corpus_dir": str(corpus_dir)}},
                "qa_quality_scores": {"config": {"roundtrip_top_k": 50}},
                "qa_splits": {"config": {"val_fraction": 0.0, "test_fraction": 0.0}},
                "training_recipe": {
                    "config": {"training_examples": {"min_batches": 1, "batch_size": 4, **training_examples}}
                },
            }
        },
        resources=build_resources(str(root), generator=QuestionGeneratorResource(backend="structure")),
        instance=dg.DagsterInstance.ephemeral(),
    )


def test_structure_backend_trains_title_questions_on_untitled_text(mini_corpus_dir, tmp_path):
    result = materialize_training_rows(mini_corpus_dir, tmp_path)
    assert result.success
    qa = result.output_for_node("synthetic_qa")
    assert qa.height > 0
    assert set(qa["generator"]) == {StructureQuestionGenerator.name}
    chunks = result.output_for_node("document_chunks")
    titles = {clean_title(t) for t in chunks["title"] if t}
    # Title questions exist: the cleaned page titles of the mini corpus.
    assert titles & set(qa["question"])

    rows = result.output_for_node("training_examples")
    assert rows.height > 0
    title_by_chunk = dict(zip(chunks["chunk_id"], chunks["title"], strict=True))
    with_title = [
        r for r in rows.iter_rows(named=True) if r["positive"].startswith(title_by_chunk[r["positive_id"]])
    ]
    assert with_title == []
    negatives = [c for c in rows.columns if c.startswith("negative_")]
    full_texts = set(chunks["text"])
    for col in negatives:
        assert not set(rows[col]) & full_texts  # negatives lose their header too
    mats = result.asset_materializations_for_node("training_examples")
    assert mats[-1].metadata["rows_without_title_header"].value == rows.height


def test_strip_title_headers_never_keeps_the_full_text(mini_corpus_dir, tmp_path):
    result = materialize_training_rows(mini_corpus_dir, tmp_path, strip_title_headers="never")
    rows = result.output_for_node("training_examples")
    chunks = result.output_for_node("document_chunks")
    assert rows.height > 0
    assert set(rows["positive"]) <= set(chunks["text"])


def test_phrase_positives_reaches_the_structure_generator(tmp_path):
    generator = QuestionGeneratorResource(backend="structure", phrase_positives=4).build(tmp_path / "cache")
    assert isinstance(generator, StructureQuestionGenerator)
    assert generator.max_phrase_positives == 4
    assert QuestionGeneratorResource(backend="structure").build(tmp_path / "cache").max_phrase_positives == 1
