"""Contrastive fine-tuning of a sentence-transformers bi-encoder.

The loss is InfoNCE over in-batch and mined hard negatives
(``MultipleNegativesRankingLoss``), by default in its cached GradCache form
(Gao et al. 2021), which decouples the effective batch from memory: the batch
size sets how many negatives each query sees, the mini-batch only how much is
in memory at once. Temperature 0.02 (scale 50) follows E5/GTE/Nemotron practice
and beat 0.05 in our own NFCorpus runs (shared/README.md).

Everything here is sentence-transformers' own trainer, sampler and losses; this
module only chooses settings, adds validation-driven model selection and an
optional LM-Cocktail merge with the base, and writes a model card.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch

from embed_assets.models import ENCODE_BATCH_SIZE, best_device, embedding_dim, resolve_model_path

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

log = logging.getLogger(__name__)

CARD_HEADING = "## embed_assets training record"
TEACHER_LOSSES = ("margin_mse", "margin_mse+in_batch")
LABEL = "label"  # the column sentence-transformers' collator passes to the loss as labels


@dataclass(frozen=True)
class TrainingConfig:
    """Args:
    epochs: passes over the training rows.
    max_steps: stop after this many optimiser steps (-1 = no cap); a CPU budget knob.
    batch_size: rows per step. Every other row's positive and negatives are a
        row's in-batch negatives, so bigger is better for contrastive learning.
    mini_batch_size: GradCache chunk size (``cached_loss=True``): memory knob only.
    cached_loss: use ``CachedMultipleNegativesRankingLoss`` when ``batch_size`` exceeds
        ``mini_batch_size``; otherwise GradCache's extra forward pass buys nothing, so the
        plain loss (same maths) is used.
    learning_rate: peak AdamW learning rate (2e-5 beat 5e-6 on NFCorpus).
    warmup_ratio: share of steps for linear warmup, then cosine decay to 0.
    scale: inverse temperature of the softmax (50 = temperature 0.02).
    max_seq_length: truncate inputs to this many tokens.
    weight_decay: AdamW weight decay.
    eval_steps: validate every N steps (None = twice per run, when a val set exists).
    early_stopping_patience: stop after this many validations without improvement.
    matryoshka_dims: also train truncated embeddings of these sizes (MatryoshkaLoss).
    lora_rank: >0 trains LoRA adapters of this rank (for large bases) and merges them.
    merge_weights: base-model weights to try for an LM-Cocktail linear merge,
        picked on validation; (0.0,) disables merging. Without validation there is
        nothing to pick with: a single weight (one chosen earlier) is applied as given,
        several are ignored.
    guided_in_batch: mask in-batch negatives that the frozen *base* model scores above
        the row's positive (GISTEmbed, Solatorio 2024, with the base as guide). Generated
        questions on a topical corpus often have other relevant chunks in the batch;
        plain InfoNCE would push those away. Costs one extra no-grad forward per step.
    guide_margin_strategy, guide_margin: how close to the positive's guide score a
        negative may come before it is masked: "absolute" masks above ``pos - margin``,
        "relative" above ``pos * (1 - margin)`` (0.05 = the 95% TopK-PercPos ceiling).
    teacher_loss: for rows that carry a teacher's margins (a ``label`` column):
        ``margin_mse`` fits the student's score margins to the teacher's (GPL, Wang et al. 2022);
        ``margin_mse+in_batch`` adds InfoNCE over in-batch and the kept hard negatives on the
        same embeddings (one forward pass). Rows without labels train with InfoNCE alone. The
        default, MarginMSE alone, beat the mix on Cranfield's dev queries (+0.72 against +0.48
        nDCG@10, benchmarks/README.md).
    margin_mse_weight: weight of the MarginMSE term beside InfoNCE. MarginMSE is computed on
        cosine margins (at most 2 apart) and InfoNCE on ``scale`` x cosine logits, so the
        term is small at weight 1; the default puts its gradient on the logits' scale.
    seed: seeds data order, dropout and initialisation.
    """

    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    mini_batch_size: int = 16
    cached_loss: bool = True
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    scale: float = 50.0
    max_seq_length: int = 128
    weight_decay: float = 0.01
    eval_steps: int | None = None
    early_stopping_patience: int = 2
    matryoshka_dims: tuple[int, ...] = ()
    lora_rank: int = 0
    merge_weights: tuple[float, ...] = (0.0, 0.5)
    guided_in_batch: bool = False
    guide_margin_strategy: str = "absolute"
    guide_margin: float = 0.0
    teacher_loss: str = "margin_mse"
    margin_mse_weight: float = 100.0
    seed: int = 42

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (
                self.max_steps == -1 or self.max_steps > 0,
                f"max_steps must be -1 or > 0, got {self.max_steps}",
            ),
            (self.batch_size >= 2, f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}"),
            (self.mini_batch_size >= 1, f"mini_batch_size must be >= 1, got {self.mini_batch_size}"),
            (0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.scale > 0, f"scale must be > 0, got {self.scale}"),
            (self.max_seq_length >= 8, f"max_seq_length must be >= 8, got {self.max_seq_length}"),
            (self.lora_rank >= 0, f"lora_rank must be >= 0, got {self.lora_rank}"),
            (all(0 <= w < 1 for w in self.merge_weights), "merge_weights must each be in [0, 1)"),
            (len(self.merge_weights) > 0, "merge_weights needs at least one value (use (0.0,) to disable)"),
            (
                self.guide_margin_strategy in ("absolute", "relative"),
                f"guide_margin_strategy must be 'absolute' or 'relative', got {self.guide_margin_strategy!r}",
            ),
            (self.guide_margin >= 0, f"guide_margin must be >= 0, got {self.guide_margin}"),
            (
                self.teacher_loss in TEACHER_LOSSES,
                f"teacher_loss must be one of {', '.join(TEACHER_LOSSES)}, got {self.teacher_loss!r}",
            ),
            (self.margin_mse_weight > 0, f"margin_mse_weight must be > 0, got {self.margin_mse_weight}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class ValidationSet:
    """Queries, a corpus and their relevance, as sentence-transformers' IR evaluator takes them."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]


@dataclass
class TrainingResult:
    model_dir: str
    steps: int
    train_rows: int
    train_seconds: float  # wall time of trainer.train(), evaluation included
    examples_per_second: float  # optimiser steps only
    base_val_ndcg10: float | None = None
    best_val_ndcg10: float | None = None
    merge_weight: float = 0.0
    merge_candidates: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    device: str = "cpu"
    best_step: int | None = None  # the checkpoint validation kept (None: the last step)
    refit: dict | None = None  # set by refit_bi_encoder: rows and steps of the retraining
    resumed_from_step: int | None = None  # started from a train_prefix checkpoint at this step


def _step_timer():
    """A callback that sums the wall time of optimiser steps only (no evaluation, no saving),
    so examples/s compares like for like with a bare training loop."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds = 0.0
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self._t

    return StepTimer()


def _set_seeds(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _val_evaluator(val: ValidationSet):
    """sentence-transformers' IR evaluator on ``val``. The trainer's in-training validation and
    :func:`validation_ndcg10` use this one builder (same batch size, so the same padding), so a
    score computed by one can stand in for the other."""
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        val.queries,
        val.corpus,
        val.relevant,
        name="val",
        write_csv=False,
        show_progress_bar=False,
        batch_size=ENCODE_BATCH_SIZE,  # the chunk index's, whose vectors stand in for the base's
    )


def validation_ndcg10(model, val: ValidationSet, corpus_vectors: np.ndarray | None = None) -> float:
    """nDCG@10 of ``model`` (a loaded SentenceTransformer) on ``val``: the score that picks
    checkpoints, merge weights and recipes.

    Args:
        model: the model whose queries (and, without ``corpus_vectors``, corpus) are embedded.
        val: the validation set.
        corpus_vectors: ``model``'s vectors of ``val.corpus``, one row per entry in its order
            (the base model's are already in the chunk index's cache); None embeds the corpus.
    """
    evaluator = _val_evaluator(val)
    known = {} if corpus_vectors is None else {"corpus_embeddings": torch.from_numpy(corpus_vectors)}
    return float(evaluator(model, **known)[evaluator.primary_metric])


def _linear_merge(model, base_state: dict[str, torch.Tensor], base_weight: float) -> None:
    """LM-Cocktail (Xiao et al. 2023) in its two-model form: w·base + (1−w)·fine-tuned.

    Hand-written because sentence-transformers' merging needs mergekit, which is
    outside our stack, and a linear merge of two same-shape state dicts is one line.
    """
    with torch.no_grad():
        for name, param in model.state_dict().items():
            if name in base_state and param.dtype.is_floating_point:
                param.mul_(1 - base_weight).add_(base_state[name].to(param.device), alpha=base_weight)


def text_columns(train: pl.DataFrame) -> list[str]:
    """The texts the loss embeds, in order: anchor, positive, then the negatives."""
    return ["anchor", "positive"] + sorted(c for c in train.columns if c.startswith("negative_"))


def training_columns(train: pl.DataFrame) -> list[str]:
    """The columns the trainer reads: the texts, then the teacher's margins when the rows carry them."""
    return text_columns(train) + ([LABEL] if LABEL in train.columns else [])


def full_batches(train: pl.DataFrame, batch_size: int, seed: int = 42) -> int:
    """How many full batches of ``batch_size`` one pass over ``train`` gives when no text may
    repeat inside a batch: the rule the trainer's sampler applies (an in-batch duplicate
    would be a false negative).

    Counted with sentence-transformers' own ``NoDuplicatesBatchSampler`` and the trainer's
    seed, so a check built on it passes exactly when training can run.
    """
    from datasets import Dataset
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    if train.height < batch_size:
        return 0
    sampler = NoDuplicatesBatchSampler(
        Dataset.from_polars(train.select(text_columns(train))),
        batch_size=batch_size,
        drop_last=True,
        generator=torch.Generator(),
        seed=seed,
    )
    # The public iterator pads a short pass with repeated rows up to len(sampler); one pass
    # without repeats is what the trainer can rely on (its step count is capped by it).
    one_pass = getattr(sampler, "_iter_one_pass", None)
    if one_pass is None:  # another sentence-transformers release: the padded count, an upper bound
        return sum(1 for _ in sampler)
    sampler.generator.manual_seed(seed)  # as the sampler's own __iter__ does for epoch 0
    values = sampler.dataset
    return sum(
        1
        for _ in one_pass(
            lambda i: {str(v) for v in values[i].values()},
            lambda sample, batch: not sample.isdisjoint(batch),
        )
    )


@dataclass
class _Run:
    """A trainer set up for one training run, and what the run needs around it."""

    trainer: Any
    model: Any
    base_state: dict[str, torch.Tensor]
    timer: Any
    evaluator: Any
    base_val: float | None
    total_steps: int
    device: str


def _load_model(base_model: str, config: TrainingConfig, device: str) -> SentenceTransformer:
    """``base_model`` on ``device``, truncating inputs at ``config.max_seq_length``."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model_path(base_model), device=device)
    model.max_seq_length = config.max_seq_length
    # Fail before any training: MatryoshkaLoss cannot truncate to more dimensions than exist.
    if too_big := [d for d in config.matryoshka_dims if d > embedding_dim(model)]:
        raise ValueError(
            f"matryoshka_dims {too_big} exceed the model's embedding size {embedding_dim(model)}"
        )
    return model


def _add_lora(model: SentenceTransformer, rank: int) -> None:
    """Wrap ``model``'s transformer in LoRA adapters of ``rank`` (alpha 2 x rank), in place."""
    from peft import LoraConfig, TaskType, get_peft_model

    transformer = model[0]
    transformer.model = get_peft_model(
        transformer.model,
        LoraConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            r=rank,
            lora_alpha=2 * rank,
            lora_dropout=0.1,
        ),
    )


def _validation(
    model: SentenceTransformer, val: ValidationSet | None, base_val_ndcg10: float | None
) -> tuple[Any, float | None]:
    """The evaluator for ``val`` and the base model's score on it, ``(None, None)`` without
    validation queries. A known ``base_val_ndcg10`` saves scoring the base again."""
    if val is None or not val.queries:
        return None, None
    evaluator = _val_evaluator(val)
    base_val = base_val_ndcg10
    if base_val is None:
        base_val = float(evaluator(model)[evaluator.primary_metric])
    return evaluator, base_val


def _training_arguments(
    output_dir: Path, config: TrainingConfig, device: str, total_steps: int, validate: bool
) -> SentenceTransformerTrainingArguments:
    """The trainer's arguments for ``config``. With ``validate`` it evaluates and checkpoints on
    the same schedule and keeps the best checkpoint by validation nDCG@10."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    eval_steps = config.eval_steps or max(1, total_steps // 2)
    use_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float < 1 is a ratio
        lr_scheduler_type="cosine",
        weight_decay=config.weight_decay,
        # An in-batch duplicate text would be a false negative for the contrastive loss.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        seed=config.seed,
        data_seed=config.seed,
        bf16=use_bf16,
        fp16=device == "cuda" and not use_bf16,
        eval_strategy="steps" if validate else "no",
        eval_steps=eval_steps if validate else None,
        # load_best_model_at_end needs a checkpoint at every evaluation.
        save_strategy="steps" if validate else "no",
        save_steps=eval_steps if validate else None,
        save_total_limit=2,
        load_best_model_at_end=validate,
        metric_for_best_model="eval_val_cosine_ndcg@10" if validate else None,
        greater_is_better=True,
        logging_steps=max(1, total_steps // 10),
        report_to=[],
        dataloader_drop_last=True,
        disable_tqdm=os.environ.get("EMBED_ASSETS_PROGRESS", "0") != "1",
    )


def _prepare_run(
    base_model: str,
    train: pl.DataFrame,
    output_dir: Path,
    config: TrainingConfig,
    val: ValidationSet | None,
    base_val_ndcg10: float | None,
    extra_callbacks: tuple = (),
) -> _Run:
    """Model, loss, arguments and trainer for ``config``. Every run on the same rows and config
    gets the same arguments (evaluation and save schedule included), which is what lets a run
    resume from a checkpoint that :func:`train_prefix` wrote."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import EarlyStoppingCallback

    columns = training_columns(train)
    if train.height < config.batch_size:
        raise ValueError(f"need at least batch_size={config.batch_size} training rows, got {train.height}")
    # Seeded before the model loads, so that freshly initialised weights (LoRA adapters) are the
    # same on every run with this seed.
    _set_seeds(config.seed)
    device = best_device()
    model = _load_model(base_model, config, device)
    # The base weights, before any adapter wraps them: what an LM-Cocktail merge mixes back in.
    base_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    if config.lora_rank > 0:
        _add_lora(model, config.lora_rank)

    loss = build_loss(
        model, base_model, config, num_negatives=len(text_columns(train)) - 2, teacher_labels=LABEL in columns
    )

    dataset = Dataset.from_polars(train.select(columns))
    total_steps = planned_steps(train.height, config)
    evaluator, base_val = _validation(model, val, base_val_ndcg10)
    args = _training_arguments(output_dir, config, device, total_steps, validate=evaluator is not None)
    timer = _step_timer()
    callbacks = [timer, *extra_callbacks]
    if evaluator:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator, callbacks=callbacks
    )
    return _Run(trainer, model, base_state, timer, evaluator, base_val, total_steps, device)


def planned_steps(rows: int, config: TrainingConfig) -> int:
    """The optimiser steps ``config`` plans for ``rows`` training rows (its step cap, else its epochs)."""
    steps_per_epoch = max(1, rows // config.batch_size)
    return config.max_steps if config.max_steps > 0 else int(steps_per_epoch * config.epochs)


def train_bi_encoder(
    base_model: str,
    train: pl.DataFrame,
    output_dir: str | Path,
    config: TrainingConfig | None = None,
    val: ValidationSet | None = None,
    card: dict | None = None,
    *,
    base_val_ndcg10: float | None = None,
    resume_from: str | Path | None = None,
) -> TrainingResult:
    """Fine-tune ``base_model`` on ``train`` and save the result to ``output_dir``.

    Args:
        base_model: model folder, hub id or the embedded alias.
        train: rows ``anchor, positive[, negative_1..n]`` (extra columns are ignored).
        output_dir: where the final sentence-transformers model is written.
        config: hyper-parameters (see :class:`TrainingConfig`).
        val: validation queries/corpus; when given, checkpoints are selected and
            training stops early on its nDCG@10, and merge weights are chosen on it.
        card: extra lineage (data versions, run ids) recorded in the model card.
        base_val_ndcg10: ``base_model``'s nDCG@10 on ``val`` when already known (it is scored
            once per validation set, not once per training).
        resume_from: a checkpoint :func:`train_prefix` wrote for the same ``base_model``,
            ``train``, ``config`` and ``val``: training continues from its step with its
            optimiser, scheduler, data order and random state instead of starting again.
    """
    config = config or TrainingConfig()
    output_dir = Path(output_dir)
    run = _prepare_run(base_model, train, output_dir, config, val, base_val_ndcg10)
    trainer, model = run.trainer, run.model
    start = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - start
    steps = _steps_run(out, train, config)
    if config.lora_rank > 0:
        # Fold the adapters into plain weights: export, serving and base merging need no peft.
        model[0].model = model[0].model.merge_and_unload()

    resumed_at = _checkpoint_step(str(resume_from)) if resume_from else None
    timed_steps = steps - (resumed_at or 0)
    result = TrainingResult(
        model_dir=str(output_dir),
        steps=steps,
        train_rows=train.height,
        train_seconds=round(seconds, 2),
        examples_per_second=round(timed_steps * config.batch_size / run.timer.seconds, 3)
        if run.timer.seconds
        else 0.0,
        base_val_ndcg10=run.base_val,
        history=[h for h in trainer.state.log_history if "eval_val_cosine_ndcg@10" in h or "loss" in h],
        device=run.device,
        best_step=_checkpoint_step(trainer.state.best_model_checkpoint),
        resumed_from_step=resumed_at,
    )
    if run.evaluator is not None:
        # The kept checkpoint's score was computed by the same evaluator during training.
        state = trainer.state
        known = (
            {0.0: float(state.best_metric)}
            if state.best_model_checkpoint and state.best_metric is not None
            else {}
        )
        _choose_merge(model, run.base_state, config, val, result, known)
    elif len(set(config.merge_weights)) == 1 and config.merge_weights[0] > 0:
        _linear_merge(model, run.base_state, config.merge_weights[0])
        result.merge_weight = config.merge_weights[0]
    model.save(str(output_dir))
    _write_card(output_dir, base_model, config, result, card or {})
    import shutil

    shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    return result


@dataclass
class PrefixResult:
    """What :func:`train_prefix` leaves: the score after its steps and, when the schedule has
    steps left, the checkpoint :func:`train_bi_encoder` resumes from."""

    steps: int
    val_ndcg10: float
    checkpoint: str | None
    seconds: float


def train_prefix(
    base_model: str,
    train: pl.DataFrame,
    output_dir: str | Path,
    config: TrainingConfig,
    val: ValidationSet,
    steps: int,
    *,
    base_val_ndcg10: float | None = None,
) -> PrefixResult:
    """Run the first ``steps`` optimiser steps of ``config``'s schedule (warmup and decay planned
    for all of its steps), score the model on ``val``, and keep a resumable checkpoint.

    This is how a candidate recipe is judged cheaply: by the start of its own training, which the
    chosen candidate then finishes (``train_bi_encoder(..., resume_from=checkpoint)``) instead of
    training those steps again. The score is that of the model the full run would deliver if it
    stopped here: the best checkpoint validation kept so far (when the schedule validates before
    ``steps``), else the weights at ``steps``; no merge with the base.

    Args:
        base_model, train, config, val: as for :func:`train_bi_encoder`, which must get the
            same values to resume (the same arguments, so the same evaluation schedule).
        output_dir: the checkpoint is written under ``output_dir/checkpoints``.
        steps: how many steps to run (at most the schedule's).
        base_val_ndcg10: ``base_model``'s score on ``val`` when already known.
    """
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= steps:
                control.should_save = True  # the resumable checkpoint: weights, optimiser, scheduler, RNG
                control.should_training_stop = True

    output_dir = Path(output_dir)
    run = _prepare_run(base_model, train, output_dir, config, val, base_val_ndcg10, (StopAt(),))
    start = time.perf_counter()
    out = run.trainer.train()
    done = _steps_run(out, train, config)
    score = validation_ndcg10(run.model, val)
    checkpoint = output_dir / "checkpoints" / f"checkpoint-{done}"
    # A schedule that ended here leaves nothing to resume; LoRA adapters are not resumed.
    resumable = done < run.total_steps and config.lora_rank == 0 and checkpoint.is_dir()
    return PrefixResult(
        done, score, str(checkpoint) if resumable else None, round(time.perf_counter() - start, 1)
    )


def _steps_run(out, train: pl.DataFrame, config: TrainingConfig) -> int:
    """The optimiser steps a ``trainer.train()`` output ran; 0 is an error, because the
    no-duplicates sampler could not fill one batch and saving the base model as "fine-tuned"
    would lie."""
    steps = int(out.global_step)
    if steps == 0:
        raise ValueError(
            f"training ran 0 steps: {train.height} rows could not fill one batch of {config.batch_size} "
            "without repeating a text; add data or lower batch_size"
        )
    return steps


def _checkpoint_step(path: str | None) -> int | None:
    """The step of a ``checkpoint-N`` folder, as the trainer names them."""
    tail = Path(path).name if path else ""
    return int(tail.split("-", 1)[1]) if tail.startswith("checkpoint-") and tail[11:].isdigit() else None


def refit_bi_encoder(
    base_model: str,
    rows: pl.DataFrame,
    output_dir: str | Path,
    config: TrainingConfig,
    selected: TrainingResult,
    card: dict | None = None,
) -> TrainingResult:
    """Train again from ``base_model`` on ``rows`` (training *and* validation questions) with what
    validation chose in ``selected``: the kept checkpoint's step count and the merge weight.

    Model selection first, then every document trains: nothing is selected here, so the held-out
    questions only ever chose settings and never judged a model trained on them. The returned
    result keeps ``selected``'s validation scores (they chose the settings) and records the refit.
    On NFCorpus dev the 10% validation holdout alone cost 0.40 nDCG@10 (benchmarks/README.md).
    """
    steps = selected.best_step or selected.steps
    # Without validation the trainer applies a single merge weight as given.
    refit_config = replace(config, max_steps=steps, merge_weights=(selected.merge_weight,), eval_steps=None)
    result = train_bi_encoder(base_model, rows, output_dir, refit_config, val=None, card=card)
    combined = replace(
        result,
        base_val_ndcg10=selected.base_val_ndcg10,
        best_val_ndcg10=selected.best_val_ndcg10,
        merge_weight=selected.merge_weight,
        merge_candidates=selected.merge_candidates,
        history=selected.history,
        best_step=steps,
        refit={"rows": rows.height, "steps": result.steps, "selection_rows": selected.train_rows},
        resumed_from_step=selected.resumed_from_step,
    )
    _write_card(Path(output_dir), base_model, refit_config, combined, card or {})
    return combined


class TeacherMarginLoss(torch.nn.Module):
    """MarginMSE on a teacher's margins (Hofstätter et al. 2020; GPL), optionally plus InfoNCE
    (``MultipleNegativesRankingLoss``) on the same embeddings.

    sentence-transformers ships both losses but no sum of them that embeds the texts once; both
    expose ``compute_loss_from_embeddings``, so this module only embeds and adds.

    Args:
        model: the SentenceTransformer being trained.
        scale: InfoNCE's inverse temperature.
        margin_weight: the MarginMSE term's weight.
        in_batch: add InfoNCE over in-batch and the rows' hard negatives.
    """

    def __init__(self, model, scale: float, margin_weight: float, in_batch: bool):
        from sentence_transformers.losses import MarginMSELoss, MultipleNegativesRankingLoss

        super().__init__()
        self.model = model
        self.margin_weight = margin_weight
        self.margin = MarginMSELoss(model)
        self.in_batch = MultipleNegativesRankingLoss(model, scale=scale) if in_batch else None

    def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
        try:  # one merged forward pass for the passage columns (sentence-transformers >= 6)
            from sentence_transformers.base.losses.merged_forward import embed_columns

            embeddings = embed_columns(self.model, sentence_features)
        except ImportError:
            embeddings = [self.model(f)["sentence_embedding"] for f in sentence_features]
        loss = self.margin_weight * self.margin.compute_loss_from_embeddings(embeddings, labels)
        if self.in_batch is not None:
            loss = loss + self.in_batch.compute_loss_from_embeddings(embeddings, labels)
        return loss


def build_loss(
    model, base_model: str, config: TrainingConfig, num_negatives: int = 0, teacher_labels: bool = False
):
    """The training loss ``config`` asks for, wrapped for Matryoshka dimensions if any.

    Args:
        model: the SentenceTransformer being trained.
        base_model: the base it started from; loaded frozen as the guide when
            ``config.guided_in_batch`` is set.
        num_negatives: mined negative columns per row (the uncached guided loss takes at most one).
        teacher_labels: the rows carry a teacher's margins: :class:`TeacherMarginLoss`. It is not
            cached (GradCache) and not guided: the teacher's labels already decide which
            negatives count, and the rows' negatives were cleaned by it.
    """
    if teacher_labels:
        if num_negatives < 1:
            raise ValueError("teacher labels need at least one negative per row (negatives_per_example >= 1)")
        if config.guided_in_batch or config.matryoshka_dims:
            raise ValueError(
                "a teacher's labels train with TeacherMarginLoss, which does not combine with "
                "guided_in_batch or matryoshka_dims; turn those off or set the teacher to 'none'"
            )
        return TeacherMarginLoss(
            model, config.scale, config.margin_mse_weight, in_batch=config.teacher_loss != "margin_mse"
        )
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import (
        CachedGISTEmbedLoss,
        CachedMultipleNegativesRankingLoss,
        GISTEmbedLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    cached = config.cached_loss and config.batch_size > config.mini_batch_size
    if config.guided_in_batch:
        guide = SentenceTransformer(resolve_model_path(base_model), device=str(model.device))
        guide.max_seq_length = config.max_seq_length
        guide.eval()
        guided = dict(
            guide=guide,
            temperature=1.0 / config.scale,
            margin_strategy=config.guide_margin_strategy,
            margin=config.guide_margin,
            # Only query->document terms, as in MNRL: the anchor-anchor/positive-positive terms of
            # the GISTEmbed paper change the objective, not just which negatives count.
            contrast_anchors=False,
            contrast_positives=False,
        )
        if cached or num_negatives > 1:  # the uncached GISTEmbedLoss takes at most one negative column
            loss = CachedGISTEmbedLoss(model, mini_batch_size=config.mini_batch_size, **guided)
        else:
            loss = GISTEmbedLoss(model, **guided)
    elif cached:
        loss = CachedMultipleNegativesRankingLoss(
            model, scale=config.scale, mini_batch_size=config.mini_batch_size
        )
    else:
        loss = MultipleNegativesRankingLoss(model, scale=config.scale)
    if config.matryoshka_dims:
        loss = MatryoshkaLoss(model, loss, matryoshka_dims=list(config.matryoshka_dims))
    return loss


def _choose_merge(
    model,
    base_state,
    config: TrainingConfig,
    val: ValidationSet,
    result: TrainingResult,
    known: dict[float, float] | None = None,
) -> None:
    """Try each merge weight on validation, keep the best (ties go to less merging). ``known``
    holds scores already computed (weight 0: the kept checkpoint's, from training)."""
    tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    scores: dict[float, float] = {}
    for w in sorted(set(config.merge_weights)):
        if w in (known or {}):
            scores[w] = known[w]
            continue
        model.load_state_dict(tuned)
        if w > 0:
            _linear_merge(model, base_state, w)
        scores[w] = validation_ndcg10(model, val)
    best_w = max(scores, key=lambda w: (round(scores[w], 4), -w))
    model.load_state_dict(tuned)
    if best_w > 0:
        _linear_merge(model, base_state, best_w)
    result.merge_weight = best_w
    result.merge_candidates = {f"{w:.2f}": round(s, 4) for w, s in scores.items()}
    result.best_val_ndcg10 = scores[best_w]


def _write_card(
    output_dir: Path, base_model: str, config: TrainingConfig, result: TrainingResult, card: dict
) -> None:
    """Record config, data versions and results beside the weights, in JSON and in the README card."""
    record = {"base_model": base_model, "training_config": asdict(config), "result": asdict(result), **card}
    (output_dir / "embed_assets_training.json").write_text(json.dumps(record, indent=2, default=str))
    readme = output_dir / "README.md"
    section = (
        f"\n\n{CARD_HEADING}\n\n"
        f"- base model: `{base_model}`\n"
        f"- steps: {result.steps} on {result.train_rows} rows, {result.examples_per_second} examples/s on {result.device}\n"
        f"- validation nDCG@10: base {result.base_val_ndcg10}, selected {result.best_val_ndcg10} "
        f"(merge weight with base {result.merge_weight})\n"
        + "".join(f"- {k}: `{v}`\n" for k, v in card.items())
        + "\n```json\n"
        + json.dumps(asdict(config), indent=2, default=str)
        + "\n```\n"
    )
    # Replace an earlier record (a folder trained again) instead of appending a second one.
    card_text = readme.read_text() if readme.exists() else "# Fine-tuned embedding model\n"
    card_text = card_text.split(CARD_HEADING, 1)[0].rstrip("\n")
    readme.write_text(card_text + section)


def saw_validation_documents(model_dir: str | Path) -> bool:
    """Whether the model this package trained in ``model_dir`` has trained on validation questions:
    in a refit, or by starting from a model that had. Validation then scores documents the model
    learned, so checkpoint and merge choices made on it are optimistic. False for any other folder."""
    record = Path(model_dir) / "embed_assets_training.json"
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return bool((data.get("result") or {}).get("refit")) or bool(data.get("saw_validation_documents"))


def finished_training(output_dir: str | Path) -> TrainingResult | None:
    """The result recorded in ``output_dir`` by a training that finished, or None.

    The folder's name is a hash of everything that decides the weights, so a finished folder
    is the model that training would produce again: callers reuse it instead of training twice.
    """
    record = Path(output_dir) / "embed_assets_training.json"
    if not record.is_file() or not (Path(output_dir) / "modules.json").is_file():
        return None
    try:
        return TrainingResult(**json.loads(record.read_text())["result"])
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: train again
