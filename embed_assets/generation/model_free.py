"""The model-free question generators, by backend name, and what a row's generator implies for
training (kept here, below both :mod:`embed_assets.recipe` and :mod:`embed_assets.training`,
which each need it)."""

from __future__ import annotations

from embed_assets.generation.structure import StructureQuestionGenerator
from embed_assets.generation.template import TemplateQuestionGenerator

# The model-free generators a preset can name, by backend (the question_generator resource's
# ``backend``); their QA rows carry the class's ``name`` in the ``generator`` column.
MODEL_FREE_GENERATORS = {"template": TemplateQuestionGenerator, "structure": StructureQuestionGenerator}


def questions_from_title(generator_name: str) -> bool:
    """Whether a QA row's generator writes questions from the document title (so its positive
    should train without the title header)."""
    return any(
        cls.name == generator_name and getattr(cls, "questions_from_title", False)
        for cls in MODEL_FREE_GENERATORS.values()
    )
