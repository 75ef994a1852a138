"""Reading a task's data: records from jsonl, tsv or per-label line files (gzip by suffix) -> items to
evaluate and the demonstration pool.

Order in ``load_data``: read [data] -> items (grouped by input if ``group_references``) -> pool from
[examples], or a seeded shuffle of the items split into ``pool_size`` demonstrations and the rest ->
with ``limit``, a seeded random sample of the items.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.evaluate.tasks import DataSpec, Task
from llmkit.files import open_text, read_jsonl
from llmkit.prompts import Example


@dataclass(frozen=True)
class Item:
    """An evaluated item: its input, every reference answer, and (classification) its label key."""

    index: int
    input: str
    references: tuple[str, ...]
    label: str | None = None


@dataclass
class TaskData:
    """Items to evaluate and the pool demonstrations are drawn from (disjoint when split from one file)."""

    items: list[Item]
    pool: list[Example]


# ---- reading the data -----------------------------------------------------------------------------
def load_data(task: Task, limit: int | None = None) -> TaskData:
    """The items to evaluate and the demonstration pool.

    Order: read [data] -> items (grouped by input if ``group_references``) -> pool from [examples],
    or a seeded shuffle of the items split into ``pool_size`` demonstrations and the rest -> with
    ``limit``, a seeded random sample of that many items (not the first: files are often sorted,
    rt-polarity by label and fra-eng by length).
    """
    items = _items(task, task.data)
    if task.examples is not None:
        pool = [_example(task, item) for item in _items(task, task.examples)]
    else:
        if len(items) <= task.pool_size:
            raise LlmkitError(
                f"{task.data.path}: {len(items)} items cannot give {task.pool_size} demonstrations and leave any to "
                "evaluate",
                "lower pool_size in the task file or add an [examples] table",
            )
        shuffled = items[:]
        random.Random(task.seed).shuffle(shuffled)
        pool = [_example(task, item) for item in shuffled[: task.pool_size]]
        items = sorted(shuffled[task.pool_size :], key=lambda item: item.index)
    if limit is not None and limit < len(items):
        items = sorted(random.Random(task.seed).sample(items, limit), key=lambda item: item.index)
    return TaskData(items, pool)


def _example(task: Task, item: Item) -> Example:
    """A demonstration shows the label word (classification) or the first reference (generation)."""
    answer = task.labels[item.label] if item.label is not None else item.references[0]
    return Example(item.input, answer, item.label)


def _items(task: Task, spec: DataSpec) -> list[Item]:
    items: list[Item] = []
    for where, record in _records(spec):
        text = record.get(spec.input_field)
        if not isinstance(text, str) or not text.strip():
            raise LlmkitError(
                f"{where}: no text in input field {spec.input_field!r}", f"fields there: {', '.join(record)}"
            )
        refs = tuple(str(record[f]).strip() for f in spec.label_field if record.get(f) not in (None, ""))
        if not refs:
            raise LlmkitError(
                f"{where}: no value in label field {' / '.join(spec.label_field)}", f"fields there: {', '.join(record)}"
            )
        label = None
        if task.kind == "classification":
            label = refs[0]
            if label not in task.labels:
                raise LlmkitError(
                    f"{where}: label {label!r} is not in the task's [labels] ({', '.join(task.labels)})",
                    "add it to [labels] or fix label_field",
                )
        items.append(Item(len(items), text.strip(), refs, label))
    if not items:
        raise LlmkitError(f"{spec.path}: no items", "check the file and format")
    return _grouped(items) if task.group_references else items


def _grouped(items: list[Item]) -> list[Item]:
    """One item per distinct input, holding every reference given for it (in file order)."""
    merged: dict[str, list[str]] = {}
    for item in items:
        refs = merged.setdefault(item.input, [])
        refs += [r for r in item.references if r not in refs]
    return [Item(i, text, tuple(refs)) for i, (text, refs) in enumerate(merged.items())]


def _records(spec: DataSpec) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file:line, record) pairs; every value a string except what JSON holds."""
    if spec.format == "lines":
        yield from _line_records(spec)
        return
    if spec.format == "jsonl":
        _require(spec.path)
        for n, record in read_jsonl(spec.path, "one JSON object per line"):
            yield f"{spec.path}:{n}", record
        return
    with _open_text(spec.path) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = list(spec.columns) or next(reader, [])
        first = 1 if spec.columns else 2
        for n, row in enumerate(reader, first):
            if not row:
                continue
            if len(row) != len(columns):
                raise LlmkitError(
                    f"{spec.path}:{n}: {len(row)} tab-separated fields, expected {len(columns)} ({', '.join(columns)})",
                    "fix the line, or set columns = [...] in the task file for a file without a header",
                )
            yield f"{spec.path}:{n}", dict(zip(columns, row, strict=True))


def _line_records(spec: DataSpec) -> Iterator[tuple[str, dict[str, Any]]]:
    if not spec.label_files:
        raise LlmkitError(f"{spec.path}: format 'lines' needs label_files", 'label_files = {negative = "x.neg", ...}')
    field_name = spec.label_field[0]
    for label, name in spec.label_files.items():
        path = spec.path / name
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{n}", {spec.input_field: line, field_name: label}


def _require(path: Path) -> None:
    if not path.is_file():
        raise LlmkitError(f"{path}: data file not found", "pass --data PATH, or fix path in the task file")


def _open_text(path: Path):
    _require(path)
    return open_text(path, newline="")
