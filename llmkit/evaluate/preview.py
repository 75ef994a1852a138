"""What `llmkit prompt` shows: the k-shot prompt a task builds for one input, its size, and the answer.

Without a model nothing here loads torch (task files and readers are plain Python); with one, its
tokenizer counts tokens and its context window, less the room kept for the answer, fits the prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from llmkit.errors import LlmkitError
from llmkit.evaluate.readers import Item, load_data
from llmkit.evaluate.tasks import Task, answer_reserve, chat_render, item_prompt, load_task
from llmkit.prompts import Prompt, continuation


def task_with_overrides(
    name: str | os.PathLike,
    data: str | None = None,
    examples: str | None = None,
    selection: str | None = None,
    seed: int | None = None,
) -> Task:
    """``load_task`` with the items and demonstration pool read from elsewhere, and the demonstrations'
    selection and seed changed, where given (None keeps the task file's)."""
    task = load_task(name, data=data, examples=examples)
    changes = {k: v for k, v in (("selection", selection), ("seed", seed)) if v is not None}
    return replace(task, **changes)


@dataclass
class PromptPreview:
    """A built prompt; ``item`` is the evaluated item it was built for (None for a given input)."""

    task: Task
    prompt: Prompt
    item: Item | None
    counted: bool  # tokens counted with a model's tokenizer, or only characters

    def render(self) -> str:
        """The prompt, a rule, its size (and what fitting dropped), the scored continuations of a
        classification task, and the item's answer or reference."""
        task, item = self.task, self.item
        lines = [self.prompt.text, "-" * 40]
        if self.counted:
            lines.append(self.prompt.summary())
        else:
            lines.append(
                f"{len(self.prompt.examples)}-shot prompt, {len(self.prompt.text)} characters (tokens need --model)"
            )
        if task.kind == "classification":
            lines.append(
                "scored continuations: " + " | ".join(repr(continuation(task.prompt, w)) for w in task.label_words)
            )
        if item is not None and item.label is not None:
            lines.append(f"answer: {continuation(task.prompt, task.labels[item.label])!r} (label {item.label})")
        elif item is not None:
            more = f" (+{len(item.references) - 1} more)" if len(item.references) > 1 else ""
            lines.append(f"reference: {item.references[0]!r}" + more)
        return "\n".join(lines)


def preview_prompt(
    task: Task,
    shots: int,
    text: str | None = None,
    index: int | None = None,
    model: str | os.PathLike | None = None,
    method: str | None = None,
) -> PromptPreview:
    """The ``shots``-shot prompt for ``text``, or for the evaluated item numbered ``index`` (default: the
    first), exactly as `llmkit eval` builds it.

    Order: read the task's data -> pick the item -> with ``model``, load its config and
    tokenizer and the room its answer needs (``method``, default the task's) -> draw and fit the demonstrations.
    """
    data = load_data(task)
    item = None if text is not None else _evaluated_item(data.items, index)
    tokenizer, window, reserve, render = None, None, 0, None
    if model:
        from llmkit import checkpoint  # torch only when a model counts the tokens
        from llmkit.inference.loading import require_lm_head

        require_lm_head(model, "prompt --model")  # the prompt previews an eval that model cannot run
        cfg = checkpoint.load_config(model)
        tokenizer = checkpoint.load_tokenizer(Path(model), cfg)
        if tokenizer is None:
            raise LlmkitError(f"{model} has no tokenizer.json", "count tokens with a checkpoint that has one")
        window = cfg.max_seq_len
        method = "generate" if task.kind != "classification" else (method or task.method)
        reserve = answer_reserve(cfg, tokenizer, task, method)
        if task.chat:  # rendered through the model's chat template, as eval renders it
            from llmkit.chat.template import ChatTemplate

            render = chat_render(task, ChatTemplate.for_model(model, tokenizer), method)
    source = text if item is None else item.input
    index = item.index if item else 0
    prompt = item_prompt(task, data.pool, index, source, shots, tokenizer, window, reserve, render)
    return PromptPreview(task, prompt, item, counted=bool(model))


def _evaluated_item(items: list[Item], index: int | None) -> Item:
    by_index = {item.index: item for item in items}
    index = items[0].index if index is None else index
    if index not in by_index:
        raise LlmkitError(
            f"--index {index} is not an evaluated item (a demonstration, or past the end)",
            "take an index from results.json",
        )
    return by_index[index]
