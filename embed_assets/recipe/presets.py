"""Named training recipes (presets) and the rule that fills unset settings from one.

A preset names the question generator(s) it trains on and the values it gives the settings
that differ between kinds of corpus. Those settings default to ``None`` in
:mod:`embed_assets.recipe.settings` ("the recipe's value"): a value the user sets wins, an unset
one takes the preset's. Every value here says where it comes from.

``auto`` (the default) runs the first steps of every preset's training and finishes the one that
retrieves held-out *generated* questions of held-out documents best
(:mod:`embed_assets.recipe.selection`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from embed_assets.generation.model_free import MODEL_FREE_GENERATORS
from embed_assets.training.examples import training_rows

if TYPE_CHECKING:
    from embed_assets.recipe.settings import TrainingExamplesSettings

AUTO = "auto"


@dataclass(frozen=True)
class Preset:
    """A recipe for one kind of corpus.

    Args:
        name: what users write (``resources.recipe.config.preset``, ``--recipe``).
        summary: the corpora it is made for.
        generators: question-generator backends whose questions it trains on; ``auto`` generates
            with the union of every preset's.
        settings: ``{asset: {field: value}}`` for the recipe-controlled fields (those whose
            default is ``None`` in :mod:`embed_assets.recipe.settings`).
        evidence: where the values come from (literature or a measurement in benchmarks/README.md).
    """

    name: str
    summary: str
    generators: tuple[str, ...]
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    evidence: str = ""

    def generator_names(self) -> set[str]:
        """The ``generator`` column values of this preset's questions."""
        return {MODEL_FREE_GENERATORS[g].name for g in self.generators if g in MODEL_FREE_GENERATORS}

    def value(self, asset: str, name: str) -> Any:
        return self.settings.get(asset, {}).get(name)


IDENTIFIER_MANUAL = Preset(
    name="identifier-manual",
    summary="technical manuals, runbooks and tickets full of identifiers: config names, error codes, "
    "versions, commands",
    generators=("template",),
    settings={
        "synthetic_qa": {"questions_per_chunk": 2},
        "training_examples": {"negatives_per_example": 1},
        "finetuned_model": {
            "max_steps": 40,
            "scale": 50.0,
            "mini_batch_size": 16,
            "merge_weights": (0.0, 0.5),
            "refit": False,
        },
    },
    evidence="Temperature 0.02 (scale 50) and one positive-aware mined negative per row follow E5 and "
    "NV-Retriever (TopK-PercPos 0.95); merge candidates 0/0.5 follow LM-Cocktail. 40 steps are the time "
    "budget of the embedded PostgreSQL-manual run on 2 CPU cores (15.8 min at 108 GFLOP/s, selection "
    "included), where this recipe gains +10.4 nDCG@10 on held-out questions (benchmarks/README.md, 'The default "
    "run').",
)

TITLED_DOCUMENTS = Preset(
    name="titled-documents",
    summary="titled prose documents: articles, abstracts, wiki pages, knowledge-base entries",
    generators=("structure",),
    settings={
        "synthetic_qa": {"questions_per_chunk": 3},
        "training_examples": {"negatives_per_example": 0},
        "finetuned_model": {
            "max_steps": 100,
            "scale": 10.0,
            "mini_batch_size": 32,
            "merge_weights": (0.0, 0.3),
            "refit": True,
        },
    },
    evidence="Tuned on NFCorpus dev (benchmarks/README.md, 'Real queries: NFCorpus'): scale 10 beat 20 and "
    "50; a mined negative cost 0.5 nDCG@10 (topics with many relevant documents make the miner pick relevant "
    "ones); the refit on train + validation documents won 0.40 on dev. On NFCorpus test: +0.64 nDCG@10 over "
    "the base, five-seed mean.",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (IDENTIFIER_MANUAL, TITLED_DOCUMENTS)}
DEFAULT_PRESET = IDENTIFIER_MANUAL  # fills a recipe-controlled field no preset in play sets
RECIPE_NAMES = (AUTO, *PRESETS)

# Every recipe-controlled field, per asset (its default in the settings classes is None).
RECIPE_FIELDS: dict[str, frozenset[str]] = {}
for _preset in PRESETS.values():
    for _asset, _values in _preset.settings.items():
        RECIPE_FIELDS[_asset] = RECIPE_FIELDS.get(_asset, frozenset()) | frozenset(_values)


def candidates(recipe: str) -> list[Preset]:
    """The presets a recipe name stands for: all of them for ``auto``, else the one named."""
    if recipe == AUTO:
        return list(PRESETS.values())
    if recipe not in PRESETS:
        raise ValueError(f"recipe {recipe!r}: unknown; use one of {', '.join(RECIPE_NAMES)}")
    return [PRESETS[recipe]]


def generators_for(recipe: str) -> tuple[str, ...]:
    """The generator backends a recipe writes questions with (every candidate's, in order)."""
    out: list[str] = []
    for preset in candidates(recipe):
        out += [g for g in preset.generators if g not in out]
    return tuple(out)


def preset_for_generator(backend: str) -> Preset:
    """The preset that owns a generator backend (its settings shape that generator's questions)."""
    return next((p for p in PRESETS.values() if backend in p.generators), DEFAULT_PRESET)


def fill(asset: str, values: Mapping[str, Any], preset: Preset) -> dict[str, Any]:
    """``values`` with each recipe-controlled field left ``None`` taken from ``preset``
    (or, when the preset does not set it, from :data:`DEFAULT_PRESET`)."""
    out = dict(values)
    for name in RECIPE_FIELDS.get(asset, ()):
        if out.get(name) is None:
            v = preset.value(asset, name)
            out[name] = DEFAULT_PRESET.value(asset, name) if v is None else v
    return out


def preset_training_rows(
    preset: Preset,
    examples: TrainingExamplesSettings,
    mined: pl.DataFrame,
    qa_splits: pl.DataFrame,
    chunks: pl.DataFrame,
    teacher: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """A preset's training rows (train and val questions; ``split`` tells them apart): its
    generators' questions, with the preset filling what ``examples`` leaves unset.

    ``teacher``: teacher labels (empty or None: none). Rows then keep the negatives the teacher
    scores below their positive and carry its margins; at least one negative per row (see
    :func:`negatives_per_example`)."""
    labelled = teacher is not None and teacher.height > 0
    return training_rows(
        mined,
        qa_splits,
        chunks,
        negatives_per_example=negatives_per_example(preset, examples, labelled),
        strip_title_headers=examples.strip_title_headers,
        generators=preset.generator_names(),
        teacher=teacher if labelled else None,
    )


def negatives_per_example(preset: Preset, examples: TrainingExamplesSettings, teacher: bool) -> int:
    """Mined negatives per training row: the user's value, else the preset's, and with a teacher
    at least one (MarginMSE learns from the positive-negative margin; GPL uses one negative per
    question). A user's explicit 0 with a teacher is refused by name."""
    value = fill("training_examples", examples.model_dump(), preset)["negatives_per_example"]
    if teacher and examples.negatives_per_example == 0:
        raise ValueError(
            "ops.training_recipe.config.training_examples.negatives_per_example is 0, but a teacher labels the negatives; "
            "set it to 1 or more, or leave it unset"
        )
    return max(value, 1) if teacher else value
