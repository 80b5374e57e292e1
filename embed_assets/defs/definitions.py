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


EXECUTOR_ENV = "EMBED_ASSETS_EXECUTOR"
# Imported once by the multiprocess executor's forkserver, so that a step process starts as a fork
# of it instead of importing torch and transformers again (20-30 s per step on 2 busy cores with
# "spawn"). Not lancedb or polars: their runtimes warn that a fork can deadlock them.
_FORKSERVER_PRELOAD = ["torch", "sentence_transformers"]

multiprocess_executor = dg.multiprocess_executor.configured(
    lambda config: {
        "max_concurrent": config["max_concurrent"],
        "start_method": {"forkserver": {"preload_modules": _FORKSERVER_PRELOAD}},
    },
    name="multiprocess",
    config_schema={
        "max_concurrent": dg.Field(
            int, default_value=0, description="Step processes at once; 0: one per CPU core."
        )
    },
)


def _k8s_job_executor() -> dg.ExecutorDefinition:
    """dagster-k8s's executor, a Kubernetes Job per step; imported only when chosen (an optional extra)."""
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:
        raise ImportError(f"${EXECUTOR_ENV}=k8s needs dagster-k8s: pip install 'embed_assets[k8s]'") from exc
    return k8s_job_executor


_EXECUTORS = {
    "in_process": lambda: dg.in_process_executor,
    "multiprocess": lambda: multiprocess_executor,
    "k8s": _k8s_job_executor,
}


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor ``$EMBED_ASSETS_EXECUTOR`` names: ``in_process`` (default: one process per run,
    so a model loaded by one stage stays loaded for the next), ``multiprocess`` (a process per step,
    independent steps in parallel: Dagster's default) or ``k8s`` (a pod per step: deploy/helm/values.yaml).
    Nothing relies on the first: every step loads what it needs and claims the home itself."""
    name = os.environ.get(EXECUTOR_ENV, "in_process")
    if name not in _EXECUTORS:
        raise ValueError(f"${EXECUTOR_ENV}={name!r}: use one of {', '.join(_EXECUTORS)}")
    return _EXECUTORS[name]()


all_assets = dg.load_assets_from_modules(ALL_ASSET_MODULES)

defs = dg.Definitions(
    assets=all_assets,
    executor=executor_from_env(),
    jobs=[pipeline_job],
    sensors=[corpus_change_sensor],
    resources=build_resources(),
)
