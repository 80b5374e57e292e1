"""The one Definitions object that ``workspace.yaml`` loads."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded defaults never need the hub
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map fetch at import

import dagster as dg  # noqa: E402

from embed_assets.defs.assets import (  # noqa: E402
    evaluation,
    export,
    generation,
    indexing,
    ingestion,
    mining,
    quality,
    splitting,
    teacher,
    training,
)
from embed_assets.defs.io_manager import PolarsJsonIOManager  # noqa: E402
from embed_assets.defs.jobs import pipeline_job  # noqa: E402
from embed_assets.defs.resources import (  # noqa: E402
    ArtifactStoreResource,
    BaseModelResource,
    QuestionGeneratorResource,
    RecipeResource,
    TeacherResource,
)
from embed_assets.defs.sensors import CorpusSourceResource, corpus_change_sensor  # noqa: E402

ALL_ASSET_MODULES = [
    ingestion,
    indexing,
    generation,
    quality,
    splitting,
    mining,
    teacher,
    training,
    evaluation,
    export,
]


def build_resources(
    root_dir: str | None = None,
    base_model: str | None = None,
    generator: QuestionGeneratorResource | None = None,
    teacher: str | None = None,
) -> dict:
    """Resources for the Definitions object, the CLI and the tests."""
    store = ArtifactStoreResource(root_dir=root_dir) if root_dir else ArtifactStoreResource()
    return {
        "io_manager": PolarsJsonIOManager(home_dir=store.root_dir),
        "store": store,
        "base_model": BaseModelResource(name_or_path=base_model) if base_model else BaseModelResource(),
        "question_generator": generator or QuestionGeneratorResource(),
        "recipe": RecipeResource(),  # a recipe other than auto comes in the run config (--recipe)
        "teacher": TeacherResource(name_or_path=teacher) if teacher else TeacherResource(),
        "corpus_source": CorpusSourceResource(),
    }


all_assets = dg.load_assets_from_modules(ALL_ASSET_MODULES)

defs = dg.Definitions(
    assets=all_assets,
    # One process per run: the run holds its home's lock from start to end (the store resource), and the
    # models loaded by one stage stay loaded for the next.
    executor=dg.in_process_executor,
    jobs=[pipeline_job],
    sensors=[corpus_change_sensor],
    resources=build_resources(),
)
