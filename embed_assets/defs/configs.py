"""The Dagster run config of each asset and the recipe resource's fields.

Each class is the Dagster-free settings model of :mod:`embed_assets.recipe.settings` with
Dagster's ``Config`` base added: fields, defaults, ranges and descriptions are defined there
once, and show in the launchpad from there.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from embed_assets.recipe.settings import (
    SETTINGS_BY_ASSET,
    DocumentChunksSettings,
    FinetunedModelSettings,
    MinedNegativesSettings,
    OnnxModelSettings,
    QAQualitySettings,
    QASplitsSettings,
    RetrievalEvalSettings,
    RunConfigError,
    SourceDocumentsSettings,
    SyntheticQASettings,
    TrainingExamplesSettings,
    TrainingRecipeSettings,
    run_config_errors,
    upgrade_run_config,
    validate_run_config,
)


class SourceDocumentsConfig(SourceDocumentsSettings, dg.Config):
    """Where the documents come from: a folder, a JSON Lines file or a LanceDB table."""


class DocumentChunksConfig(DocumentChunksSettings, dg.Config):
    """How documents are cut into chunks."""


class SyntheticQAConfig(SyntheticQASettings, dg.Config):
    """How many questions the generator(s) write."""


class QAQualityConfig(QAQualitySettings, dg.Config):
    """Which generated pairs are kept."""


class QASplitsConfig(QASplitsSettings, dg.Config):
    """The grouped train / validation / test split."""


class MinedNegativesConfig(MinedNegativesSettings, dg.Config):
    """Positive-aware hard-negative mining."""


class TrainingExamplesConfig(TrainingExamplesSettings, dg.Config):
    """Training rows."""


class FinetunedModelConfig(FinetunedModelSettings, dg.Config):
    """Contrastive fine-tuning."""


def _nested(name: str, config: type[dg.Config]):
    """A nested settings field of :class:`TrainingRecipeSettings` typed as its Dagster ``Config``
    (the launchpad builds its schema from Config classes); description and default stay there."""
    return Field(default_factory=config, description=TrainingRecipeSettings.model_fields[name].description)


class TrainingRecipeConfig(TrainingRecipeSettings, dg.Config):
    """Training: the recipe, its rows and the fine-tuning settings, resolved once."""

    training_examples: TrainingExamplesConfig = _nested("training_examples", TrainingExamplesConfig)
    finetuned_model: FinetunedModelConfig = _nested("finetuned_model", FinetunedModelConfig)


class RetrievalEvalConfig(RetrievalEvalSettings, dg.Config):
    """Evaluation and the no-regression gate."""


class OnnxModelConfig(OnnxModelSettings, dg.Config):
    """ONNX export."""


CONFIG_BY_ASSET: dict[str, type[dg.Config]] = {
    "source_documents": SourceDocumentsConfig,
    "document_chunks": DocumentChunksConfig,
    "synthetic_qa": SyntheticQAConfig,
    "qa_quality_scores": QAQualityConfig,
    "qa_splits": QASplitsConfig,
    "mined_negatives": MinedNegativesConfig,
    "training_recipe": TrainingRecipeConfig,
    "retrieval_eval": RetrievalEvalConfig,
    "onnx_model": OnnxModelConfig,
}
assert CONFIG_BY_ASSET.keys() == SETTINGS_BY_ASSET.keys()

__all__ = [
    "CONFIG_BY_ASSET",
    "RunConfigError",
    "run_config_errors",
    "upgrade_run_config",
    "validate_run_config",
    *(cls.__name__ for cls in CONFIG_BY_ASSET.values()),
    "TrainingExamplesConfig",
    "FinetunedModelConfig",
]
