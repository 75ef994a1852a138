"""Training metrics: one JSON object per line (metrics.jsonl) and a loss-curve PNG."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmkit.files import atomic_write, read_jsonl


class MetricsLog:
    """Append-only JSONL file of records such as ``{"step": 10, "train_loss": 3.2, ...}``.

    ``keep_until(step)`` drops records past ``step``: a run resumed from a checkpoint rewrites what
    it had logged after that checkpoint, so the file reads as one uninterrupted run. A line a kill cut
    short while it was appended (the last, without its newline) is dropped on reading.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            hint = f"the run's log is damaged: fix or delete {self.path.name} (the checkpoint does not need it)"
            self.records = [record for _, record in read_jsonl(self.path, hint, torn_tail=True)]

    def keep_until(self, step: int) -> None:
        self.records = [r for r in self.records if r.get("step", 0) <= step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.records))  # a kill keeps the old log

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def loss_title(name: str, parameters: int, tokens: int) -> str:
    """``NAME: 1.26M parameters, 8.19M tokens``: the figures of the model and run that was trained."""
    from llmkit.units import human_count

    return f"{name}: {human_count(parameters)} parameters, {human_count(tokens)} tokens"


def plot_loss(records: list[dict[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """Train and validation loss against step, saved as a PNG.

    Drawn on a bare ``Figure`` (rendered by Agg), not pyplot: no display is needed and the caller's
    matplotlib backend is left alone.
    """
    from matplotlib.figure import Figure

    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    if train:
        ax.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train", linewidth=1.2)
    if val:
        ax.plot(
            [r["step"] for r in val],
            [r["val_loss"] for r in val],
            "o-",
            label="validation",
            linewidth=1.2,
            markersize=4,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)  # a reader never sees half a PNG
    return path
