"""The results file of a sweep: one JSON object per finished point (results.jsonl), written atomically.

A line holds the point's name and shape, N (``params``: the weights of every matrix multiply, the N
of the trainer's 6N), D (``tokens`` trained), C (``flops``: FLOPs per token as the trainer counts
them x D), the budget it was planned for, its final validation loss, its run directory and seconds.
``scale fit`` needs only params, tokens, flops, budget and val_loss, so results written by hand or
by another trainer fit too. Standard library only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.files import atomic_write, read_jsonl

REQUIRED = ("params", "tokens", "flops", "budget", "val_loss")


@dataclass(frozen=True)
class Result:
    """One finished point of a sweep."""

    name: str
    budget: float  # the FLOP budget the point was planned for
    params: float  # N: weights of the matrix multiplies (head included, embedding lookups not)
    tokens: float  # D: tokens trained (steps x global batch x block)
    flops: float  # C as trained: flops_per_token x tokens
    val_loss: float
    extra: dict[str, Any] = field(default_factory=dict)  # shape, run_dir, seconds, ... (kept as written)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {**{k: v for k, v in out.items() if k != "extra"}, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Result:
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise LlmkitError(f"{where}: missing {', '.join(missing)}", f"each line needs {', '.join(REQUIRED)}")
        values = {}
        for key in REQUIRED:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LlmkitError(f"{where}: {key}={value!r} is not a finite number", "fix or delete that line")
            if value <= 0:
                raise LlmkitError(f"{where}: {key}={value!r} must be > 0", "fix or delete that line")
            values[key] = float(value)
        name = str(data.get("name", where))
        extra = {k: v for k, v in data.items() if k not in REQUIRED and k != "name"}
        return cls(name=name, extra=extra, **values)


def read_results(path: str | os.PathLike, allow_missing: bool = False) -> list[Result]:
    """The results in ``path``, in file order; a missing file (unless ``allow_missing``), an empty one,
    a line that is not a JSON object or one without a finite positive params/tokens/flops/budget/val_loss
    raises a one-line LlmkitError naming the line."""
    path = Path(path)
    if not path.is_file():
        if allow_missing and not path.exists():
            return []
        raise LlmkitError(f"{path}: no such results file", "run `llmkit scale sweep` first, or check the path")
    hint = "each line is one JSON object; fix or delete it"
    results = [Result.from_dict(data, f"{path}:{number}") for number, data in read_jsonl(path, hint)]
    if not results and not allow_missing:
        raise LlmkitError(f"{path}: no results in the file", "run `llmkit scale sweep` until some points finish")
    return results


def append_result(path: str | os.PathLike, result: Result) -> None:
    """Add one line to ``path`` atomically: the whole file is rewritten beside it and renamed into
    place, so a kill leaves either the old file or the old file plus the whole new line."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write(path, old + json.dumps(result.to_dict()) + "\n")
