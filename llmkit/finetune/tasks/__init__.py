"""The fine-tuning task kinds: ``[task] kind`` -> the ``Task`` (tasks/base.py) that owns the kind.

Each kind lives in its own module of this package (classify, tokens, continued, seq2seq, instruct)
and owns its data preparation, its head, its batches, its evaluation and its best-metric rule; the
run (llmkit.finetune.run) calls the task and never asks which kind it is.

A new kind is one new module with a ``Task`` subclass and one line in ``KINDS`` (docs/finetuning.md,
"A new task kind"); ``register`` adds one at run time (a plugin, a test).

Standard library only: the config checks ``[task] kind`` and `llmkit --help` lists the kinds without
importing torch; a kind's module is imported when a run creates its task.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from llmkit.errors import LlmkitError


@dataclass(frozen=True)
class Kind:
    """One registered kind: where its Task class is and what it is, in words (for `llmkit --help`)."""

    task: str | type  # "package.module:Class" (imported on first use) or the class itself
    words: str


KINDS: dict[str, Kind] = {
    "classify": Kind("llmkit.finetune.tasks.classify:ClassifyTask", "sequence classification"),
    "tokens": Kind("llmkit.finetune.tasks.tokens:TokensTask", "token classification, NER"),
    "continue": Kind("llmkit.finetune.tasks.continued:ContinueTask", "continued pretraining"),
    "seq2seq": Kind("llmkit.finetune.tasks.seq2seq:Seq2SeqTask", "text to text"),
    "instruct": Kind("llmkit.finetune.tasks.instruct:InstructTask", "chat/instruction SFT"),
}


def register(name: str, task: str | type, words: str) -> None:
    """Add (or replace) the kind ``name``: ``task`` is a Task subclass or its "module:Class" path."""
    KINDS[name] = Kind(task, words)


def kinds() -> tuple[str, ...]:
    """The registered kinds' names, in registration order."""
    return tuple(KINDS)


def check_kind(name: str) -> None:
    """An LlmkitError unless ``name`` is a registered kind."""
    if name not in KINDS:
        raise LlmkitError(f"unknown task kind '{name}'", f"[task] kind is one of: {', '.join(KINDS)}")


def task_class(name: str) -> type:
    """The Task class of kind ``name`` (its module imported now)."""
    check_kind(name)
    task = KINDS[name].task
    if isinstance(task, str):
        module, _, attribute = task.partition(":")
        task = getattr(importlib.import_module(module), attribute)
    return task


def create(cfg: Any) -> Any:
    """The Task object for the ``[task]`` table ``cfg`` (a finetune.config.TaskConfig)."""
    return task_class(cfg.kind)(cfg)
