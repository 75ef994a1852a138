"""What a fine-tuning kind is (``Task``), and the shared parts of the kinds that train on encoded
examples (``ExampleTask``) or on labelled ones (``LabelTask``).

The run (llmkit.finetune.run.FinetuneRun) calls a task, in this order:

- ``prepare(setting) -> ModelConfig``: read and check the task's files, encode them with the
  checkpoint's tokenizer, and return init_from's config with the task's head (called once);
- ``batches(step, cfg, env)`` and ``step_tokens(batches, cfg, env)``: this process's micro-batches of
  optimizer step ``step`` (a function of seed, step and rank, so a resumed run draws the same ones)
  and the step's real input tokens over all processes;
- ``evaluate(state) -> dict``: the dev metrics, ``val_loss`` first, then the kind's own.

``best_metric`` (a key of ``evaluate``'s dict) and ``best_lower`` are the kind's rule for OUT/best;
``head_modules(model_cfg)`` names the new modules LoRA trains in full beside the adapter; ``packed``
is (examples, windows) when training rows are windows packed from several examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from llmkit.config import ModelConfig, TrainConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.finetune import data as fdata
from llmkit.objectives import IGNORE_INDEX, Batch, lm_loss
from llmkit.train.distributed import Dist
from llmkit.train.step import TrainState

if TYPE_CHECKING:
    from llmkit.finetune.config import TaskConfig

GROUP_BATCHES = 50  # group_by_length: global batches per length-sorted run (transformers' mega_batch_mult)


@dataclass
class Setting:
    """What a task's preparation reads from the run."""

    base: ModelConfig  # init_from's config
    tokenizer: Tokenizer  # init_from's tokenizer (saved with every checkpoint of the run)
    init_from: str  # the checkpoint directory
    dropout: float | None  # [model] dropout (None: the checkpoint's own)
    train: TrainConfig  # the run's [train] table
    world_size: int  # processes (group_by_length's runs span global batches)

    @property
    def block(self) -> int:
        """The longest sequence the task encodes: block_size, within the model's context."""
        return min(self.train.block_size, self.base.max_seq_len)


class Task:
    """One fine-tuning kind (see the module docstring for the calls a run makes)."""

    best_metric = "val_loss"
    best_lower = True
    packed: tuple[int, int] | None = None

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg  # the [task] table

    def prepare(self, setting: Setting) -> ModelConfig:
        raise NotImplementedError

    def head_modules(self, model_cfg: ModelConfig) -> list[str]:
        """The new modules LoRA trains in full (peft's ``modules_to_save``); none: the model keeps its head."""
        return []

    def batches(self, step: int, cfg: TrainConfig, env: Dist) -> list[Batch]:
        raise NotImplementedError

    def step_tokens(self, batches: list[Batch], cfg: TrainConfig, env: Dist) -> int | torch.Tensor:
        raise NotImplementedError

    def evaluate(self, state: TrainState) -> dict[str, float]:
        raise NotImplementedError


def with_dropout(base: ModelConfig, dropout: float | None, **changes: Any) -> ModelConfig:
    """``base`` with ``changes`` and the [model] dropout (None: the checkpoint's own)."""
    return base.replace(**changes, **({} if dropout is None else {"dropout": dropout}))


def needs_files(cfg: TaskConfig, also: str = "") -> None:
    """An LlmkitError unless [task] names train_file and dev_file (``also``: the other way to give data)."""
    if not cfg.train_file or not cfg.dev_file:
        raise LlmkitError(f"task '{cfg.kind}' needs train_file and dev_file{also}", "set them in [task]")


def pad_id(tokenizer: Tokenizer, cfg: ModelConfig) -> int:
    """The id that pads batches: the tokenizer's pad, else the model's, else eos, else 0 (masked anyway)."""
    for candidate in (tokenizer.pad_token_id, cfg.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


class ExampleTask(Task):
    """A kind that trains on encoded examples (``train_examples``, drawn in a seeded order) and scores
    the dev examples (``dev_examples``) in batches of ``eval_batch_size``: the loss over their labels,
    and what ``predict`` and ``score`` add."""

    train_examples: fdata.Examples
    dev_examples: list[fdata.Encoded]

    def examples(self, encoded: list[fdata.Encoded], pad: int, setting: Setting,
                 collate: Callable[[Sequence[fdata.Encoded]], Batch] | None = None) -> fdata.Examples:  # fmt: skip
        """The training examples; with [task] group_by_length, runs of 50 global batches of each epoch's
        shuffled order are sorted by length, as the Trainer does."""
        group = 0
        if self.cfg.group_by_length:
            cfg = setting.train
            group = GROUP_BATCHES * cfg.batch_size * cfg.grad_accum * setting.world_size
        return fdata.Examples(encoded, pad, collate, group)

    def batches(self, step: int, cfg: TrainConfig, env: Dist) -> list[Batch]:
        return [
            self.train_examples.batch(step * cfg.grad_accum + micro, cfg.batch_size, seed=cfg.seed,
                                      rank=env.rank, world_size=env.world_size).to(env.device, non_blocking=True)
            for micro in range(cfg.grad_accum)
        ]  # fmt: skip

    def step_tokens(self, batches: list[Batch], cfg: TrainConfig, env: Dist) -> int | torch.Tensor:
        """Real (not padding) input tokens of the step, this process's times the processes: a tensor
        on the device, brought to the host with the losses at the next log (no sync per step)."""
        counts = [b.inputs["attention_mask"].sum() if "attention_mask" in b.inputs else b.inputs["input_ids"].numel()
                  for b in batches]  # fmt: skip
        return sum(counts) * env.world_size

    @torch.no_grad()
    def evaluate(self, state: TrainState) -> dict[str, float]:
        """The whole dev set on every process (the scores are the same everywhere without gathering)."""
        model = state.raw
        model.eval()
        loss_sum, count, predictions = 0.0, 0, []
        size = self.cfg.eval_batch_size
        for start in range(0, len(self.dev_examples), size):
            batch = self.train_examples.collate(self.dev_examples[start : start + size])
            batch = batch.to(state.env.device)
            with state.autocast:
                logits = model(**batch.inputs).logits
            n = int((batch.labels != IGNORE_INDEX).sum())
            loss_sum += float(lm_loss(logits, batch.labels)) * n
            count += n
            predictions += self.predict(logits, batch)
        scores = {"val_loss": loss_sum / max(count, 1)}
        scores.update(self.score(predictions, state))  # in eval mode: no dropout in what generation scores
        model.train()
        return scores

    def predict(self, logits: torch.Tensor, batch: Batch) -> list[Any]:
        """One dev batch's predictions, for ``score`` (none by default)."""
        return []

    def score(self, predictions: list[Any], state: TrainState) -> dict[str, float]:
        """The kind's dev metrics besides val_loss, from the dev set's predictions (the model in eval mode)."""
        return {}


class LabelTask(ExampleTask):
    """A kind with a new classification head over labels read from the training file (or [task] labels):
    ``read`` gives the rows, ``tags`` every label a set of rows holds, ``gold`` each row's gold answer,
    ``encode`` the examples, ``head`` the model config; the best checkpoint is the highest ``best_metric``."""

    best_lower = False
    labels: list[str]
    dev_gold: list[Any]

    def read(self, path: str) -> list[tuple[Any, Any]]:
        raise NotImplementedError

    def tags(self, rows: list[tuple[Any, Any]]) -> list[str]:
        raise NotImplementedError

    def encode(self, tokenizer: Tokenizer, rows: list, labels: Sequence[str], block: int) -> list[fdata.Encoded]:
        raise NotImplementedError

    def head(self, base: ModelConfig, labels: list[str], dropout: float | None) -> ModelConfig:
        raise NotImplementedError

    def prepare(self, setting: Setting) -> ModelConfig:
        task = self.cfg
        needs_files(task)
        train, dev = self.read(task.train_file), self.read(task.dev_file)
        train_labels, dev_labels = self.tags(train), self.tags(dev)
        train = train[: task.max_train_examples or None]
        dev = dev[: task.max_dev_examples or None]
        labels = task.labels or sorted(set(train_labels))
        fdata.check_labels(train_labels, labels, task.train_file)
        fdata.check_labels(dev_labels, labels, task.dev_file)
        model_cfg = self.head(setting.base, labels, setting.dropout)
        pad = pad_id(setting.tokenizer, model_cfg)
        if model_cfg.family == "decoder" and model_cfg.pad_token_id is None:
            model_cfg = model_cfg.replace(pad_token_id=pad)  # transformers finds the last token by it
        self.train_examples = self.examples(self.encode(setting.tokenizer, train, labels, setting.block), pad, setting)
        self.dev_examples = self.encode(setting.tokenizer, dev, labels, setting.block)
        self.dev_gold = [gold for _, gold in dev]
        self.labels = labels
        return model_cfg

    def head_modules(self, model_cfg: ModelConfig) -> list[str]:
        return ["score" if model_cfg.family == "decoder" else "classifier"]


def keep_lm_head(setting: Setting, kind: str, family: str, hint: str) -> ModelConfig:
    """init_from's config as it is (with [model] dropout) for a kind that trains the model's own LM head,
    which needs a ``family`` model without a classifier."""
    base = setting.base
    if base.family != family or base.has_classifier:
        raise LlmkitError(
            f"task '{kind}' needs a {family} model with its LM head, and init_from is a "
            f"{base.family}{' with a classifier' if base.has_classifier else ''}",
            hint,
        )
    return with_dropout(base, setting.dropout)


def no_head_error(kind: str, family: str, hint: str) -> LlmkitError:
    """The error for a kind whose head this model family cannot take."""
    return LlmkitError(f"task '{kind}' has no head for a {family} model", hint)
