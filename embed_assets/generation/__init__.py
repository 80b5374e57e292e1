"""Question generation: one interface, several backends."""

from embed_assets.generation.base import (
    QA_SCHEMA,
    GenerationResult,
    QuestionGenerator,
    empty_qa_frame,
    make_qa_id,
)

__all__ = ["QA_SCHEMA", "GenerationResult", "QuestionGenerator", "empty_qa_frame", "make_qa_id"]
