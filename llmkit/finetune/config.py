"""Fine-tuning configs: a TOML file with [model], [task], [method] and [train] tables -> FinetuneConfig.

Standard library only (with llmkit.config), so `llmkit finetune --help` and config errors stay fast.
Precedence: defaults < FINETUNE_TRAIN_DEFAULTS (for [train]) < the file < ``--TABLE.FIELD`` flags.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from llmkit.config import TrainConfig
from llmkit.config_tables import from_table, read_tables
from llmkit.errors import LlmkitError
from llmkit.finetune import tasks

TASK_KINDS = tasks.kinds()  # the built-in kinds (finetune/tasks/__init__.py; TaskConfig checks the live registry)
SEQ2SEQ_METRICS = ("rougeL", "bleu", "chrf")
METHODS = ("full", "freeze", "lora", "qlora")
TABLES = ("model", "task", "method", "train")

# [train] defaults for fine-tuning, where pretraining's differ: transformers' Trainer defaults
# (lr 5e-5, betas 0.9/0.999) and a schedule that decays to 0; small batches, frequent evaluation.
FINETUNE_TRAIN_DEFAULTS: dict[str, Any] = {
    "out_dir": "runs/finetune",
    "steps": 500,
    "batch_size": 16,
    "block_size": 128,
    "lr": 5e-5,
    "min_lr": 0.0,
    "warmup_steps": 0,
    "weight_decay": 0.01,
    "beta2": 0.999,
    "eval_interval": 100,
    "save_interval": 500,
}


@dataclass
class ModelTable:
    """[model]: the checkpoint to start from and what fine-tuning may change about it."""

    init_from: str = ""  # an llmkit checkpoint directory (e.g. converted by `llmkit convert --from-hf`)
    dropout: float | None = None  # None: the checkpoint's own (converted checkpoints say 0.0)


@dataclass
class TaskConfig:
    """[task]: what to learn, from which files.

    classify: TSV (a header row naming the columns) or JSONL rows with ``text_field`` and
    ``label_field``. tokens: CoNLL files (one ``word TAG`` per line, a blank line between
    sentences, BIO tags). continue: ``data`` is a directory written by `llmkit data tokenize`.
    seq2seq: TSV or JSONL pairs, ``text_field`` the input and ``label_field`` the target.
    instruct: JSONL of chat ``messages`` or of ``text_field`` (prompt) / ``label_field`` (response)
    rows, or ``files``: tasks/*.toml files mixed by ``weights``.
    """

    kind: str = "classify"  # classify | tokens | continue | seq2seq | instruct (llmkit.finetune.tasks.KINDS)
    train_file: str = ""
    dev_file: str = ""
    data: str = ""  # continue: the token directory
    text_field: str = "sentence"
    label_field: str = "label"
    columns: list[str] = field(default_factory=list)  # TSV without a header row: its column names, in order
    labels: list[str] = field(default_factory=list)  # every label (tag); empty: those of the training file, sorted
    max_train_examples: int = 0  # 0: all; else the first N (a subsample, for quick runs and benches)
    max_dev_examples: int = 0
    eval_batch_size: int = 64
    metric: str = "rougeL"  # seq2seq: the dev metric of greedy outputs (rougeL | bleu | chrf)
    dev_limit: int = 100  # seq2seq: dev examples generated for the metric; instruct with files: dev items per file
    max_new_tokens: int = 64  # seq2seq: generation length on the dev split
    pack: bool = False  # instruct: concatenate examples into full block_size windows
    # batches of rows of similar length (transformers' group_by_length): runs of 50 global batches of the
    # shuffled order, each sorted by length; less padding, less random batches
    group_by_length: bool = False
    files: list[str] = field(default_factory=list)  # instruct: task files (tasks/*.toml) mixed FLAN-style
    weights: list[float] = field(default_factory=list)  # instruct: each file's share of the mix; empty: by size

    def __post_init__(self) -> None:
        tasks.check_kind(self.kind)
        if isinstance(self.labels, str):
            self.labels = [name.strip() for name in self.labels.split(",") if name.strip()]
        for name in ("max_train_examples", "max_dev_examples"):
            if getattr(self, name) < 0:
                raise LlmkitError(f"{name}={getattr(self, name)} must be >= 0", f"change --task.{name}")
        if self.eval_batch_size < 1:
            raise LlmkitError(f"eval_batch_size={self.eval_batch_size} must be >= 1", "change --task.eval_batch_size")
        if self.metric not in SEQ2SEQ_METRICS:
            raise LlmkitError(
                f"unknown metric '{self.metric}'", f"[task] metric is one of: {', '.join(SEQ2SEQ_METRICS)}"
            )
        if self.dev_limit < 1 or self.max_new_tokens < 1:
            raise LlmkitError("dev_limit and max_new_tokens must be >= 1", "change --task.dev_limit / max_new_tokens")
        if isinstance(self.columns, str):
            self.columns = [name.strip() for name in self.columns.split(",") if name.strip()]
        if isinstance(self.files, str):
            self.files = [name.strip() for name in self.files.split(",") if name.strip()]
        if isinstance(self.weights, str):
            try:
                self.weights = [float(w) for w in self.weights.split(",") if w.strip()]
            except ValueError:
                raise LlmkitError(
                    f"[task] weights '{self.weights}' are not numbers", "give comma-separated numbers, e.g. 0.7,0.3"
                ) from None
        if self.weights and (len(self.weights) != len(self.files) or min(self.weights) <= 0):
            raise LlmkitError(
                f"[task] weights {self.weights} do not fit files {self.files}", "give one positive weight per file"
            )
        if len(set(self.labels)) != len(self.labels):
            raise LlmkitError("[task] labels lists a label twice", "give each label once")


@dataclass
class MethodConfig:
    """[method]: which weights train. full: all; freeze: the new head plus the last ``train_layers``
    blocks (0: the head only); lora / qlora: low-rank adapters (llmkit.lora)."""

    name: str = "full"  # full | freeze | lora | qlora
    train_layers: int = 0  # freeze: blocks trained on top of the head, counted from the last
    rank: int = 8  # lora
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])
    bits: int = 4  # qlora: the frozen base's weights in int8 or int4

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise LlmkitError(f"unknown method '{self.name}'", f"[method] name is one of: {', '.join(METHODS)}")
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if self.train_layers < 0:
            raise LlmkitError(f"train_layers={self.train_layers} must be >= 0", "change --method.train_layers")


@dataclass
class FinetuneConfig:
    """The whole fine-tuning run: [model], [task], [method] and [train] (a TrainConfig)."""

    model: ModelTable
    task: TaskConfig
    method: MethodConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.model), "task": asdict(self.task), "method": asdict(self.method),
                "train": self.train.to_dict()}  # fmt: skip


def load_finetune_config(path: str | os.PathLike, flags: dict[str, dict[str, Any]] | None = None) -> FinetuneConfig:
    """The run's config from a TOML file and ``flags`` ({"task": {"kind": ...}, "train": {...}}).

    A missing file, bad TOML, an unknown table or field, or a value of the wrong type is one
    LlmkitError."""
    tables = read_tables(path, TABLES, "configs/finetune/")
    flags = flags or {}
    built = {}
    for name, cls in zip(TABLES, (ModelTable, TaskConfig, MethodConfig, TrainConfig), strict=True):
        merged = {**(FINETUNE_TRAIN_DEFAULTS if name == "train" else {}), **tables.get(name, {}), **flags.get(name, {})}
        built[name] = from_table(cls, merged, f"{path} [{name}]", name)
    if not built["model"].init_from:
        raise LlmkitError(f"{path}: [model] init_from is not set", "set init_from to an llmkit checkpoint directory")
    return FinetuneConfig(**built)
