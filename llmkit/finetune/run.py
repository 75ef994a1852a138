"""`llmkit finetune`: adapt an existing checkpoint to a task with the pretraining loop (train.loop.Run).

One way down: the config (finetune.config) names a task kind -> the registry (finetune.tasks) makes
its Task -> ``FinetuneRun`` (the loop's hooks) asks the task for everything kind-specific -> the loop
(train.loop) trains and saves. ``FinetuneRun`` itself holds what every kind shares: ``init_from`` and
its tokenizer, the method (full, freeze, LoRA, QLoRA), OUT/best and OUT/last, the resume check, the card.

Order (``Run.start``): load ``init_from`` and its tokenizer -> the task reads and checks its files and
returns the model config with its head -> build it (seeded), copy every weight the base has (the new
head keeps its fresh init) -> the method -> the shared loop: dev metrics at the start, every
``eval_interval`` steps and at the end, the best one (the task's rule) kept in ``OUT/best``, the
resumable run in ``OUT/last``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmkit import checkpoint, files, model_card
from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.finetune import tasks
from llmkit.finetune.config import FinetuneConfig, MethodConfig, TaskConfig
from llmkit.finetune.tasks.base import Setting
from llmkit.lora import LoraConfig, apply_lora, merge_lora, save_adapter
from llmkit.model_card import ModelCard
from llmkit.models import build_model
from llmkit.models.stack import Stack
from llmkit.objectives import Batch
from llmkit.quantize import QuantSpec, quantize_model
from llmkit.train import distributed
from llmkit.train.distributed import Dist
from llmkit.train.loop import Run

LAST, BEST, ADAPTER, BEST_SCORES = "last", "best", "adapter", "best.json"
HEAD_PREFIXES = ("classifier.", "score.")  # the task heads' parameters: new, so always trained


def finetune(cfg: FinetuneConfig, *, resume: bool = False, verify: bool = True) -> dict[str, Any]:
    """Fine-tune ``cfg.model.init_from`` on ``cfg.task``; returns the run's summary (with the dev
    scores under ``eval`` and the best score under ``best``)."""
    env = distributed.init(cfg.train.device)
    try:
        return FinetuneRun(cfg, env, resume, verify).train()
    finally:
        distributed.cleanup()


class FinetuneRun(Run):
    """A fine-tuning run: the shared loop with a task's data, head, metrics and best-metric rule
    (``self.task``, a finetune.tasks Task) and a method's trained weights."""

    kind = "finetune"

    def __init__(self, cfg: FinetuneConfig, env: Dist, resume: bool, verify: bool = True) -> None:
        root = Path(cfg.train.out_dir)
        super().__init__(None, dataclasses.replace(cfg.train, out_dir=str(root / LAST)), env, resume, verify)
        self.fcfg, self.root, self.best_dir = cfg, root, root / BEST  # the run's checkpoint is ROOT/last
        self.task = tasks.create(cfg.task)
        self.best_metric, self.best_lower = self.task.best_metric, self.task.best_lower  # the kind's rule

    # ---- hooks of the loop ----
    def setup(self) -> ModelConfig:
        """init_from and its tokenizer -> the task's data and the model config with its head."""
        self.base = _load_base(self.fcfg.model.init_from, self.verify)
        self.tokenizer = self.base.tokenizer
        setting = Setting(self.base.config, self.tokenizer, str(self.fcfg.model.init_from), self.fcfg.model.dropout,
                          self.cfg, self.env.world_size)  # fmt: skip
        model_cfg = self.task.prepare(setting)
        self.packed = self.task.packed
        checkpoint.check_sizes(model_cfg, f"{self.fcfg.model.init_from}")
        return model_cfg

    def initial_model(self) -> nn.Module:
        torch.manual_seed(self.cfg.seed)  # the new head's init: the same on every process
        model = build_model(self.model_cfg, init=True)
        base = checkpoint.unique_state_dict(self.base)
        ours = model.state_dict()
        copied = {name: t for name, t in base.items() if name in ours and ours[name].shape == t.shape}
        model.load_state_dict(copied, strict=False)
        self.new_weights = sorted(set(ours) - set(copied))
        del self.base  # its weights now live in the model
        return self._apply_method(model)

    def adapt(self, model: nn.Module) -> nn.Module:
        """The method on a model whose saved weights are loaded next (resume): quantized buffers empty."""
        return self._apply_method(model, empty=True)

    def _apply_method(self, model: nn.Module, empty: bool = False) -> nn.Module:
        method = self.fcfg.method
        if method.name == "freeze":
            freeze(model, self.model_cfg, method.train_layers)
        elif method.name in ("lora", "qlora"):
            self.lora_cfg = lora_config(method, self.task.head_modules(self.model_cfg))
            if method.name == "qlora":
                quantize_blocks(model, method.bits, empty)
            apply_lora(model, self.lora_cfg)
        return model

    def start_files(self) -> list[Path]:
        """Before OUT/last holds a checkpoint: its log, and the best model (or adapter, or scores) of step 0."""
        return [*super().start_files(), self.best_dir, self.root / ADAPTER, self.root / BEST_SCORES]

    def batches(self, step: int) -> list[Batch]:
        return self.task.batches(step, self.cfg, self.env)

    def step_tokens(self, batches: list[Batch]) -> int | torch.Tensor:
        return self.task.step_tokens(batches, self.cfg, self.env)

    def evaluate(self) -> dict[str, float]:
        return self.task.evaluate(self.state)

    def save_best(self) -> None:
        """Full and freeze: the model as it is. LoRA: the adapter in peft's format in OUT/adapter and,
        over a float base, the merged plain checkpoint in OUT/best; QLoRA's quantized base cannot take
        the update (it would be quantized again), so its best scores go to OUT/best.json beside the adapter."""
        if self.fcfg.method.name not in ("lora", "qlora"):
            return super().save_best()
        model = self.whole_model()  # a sharded run's weights gathered on rank 0
        if self.env.is_main:
            save_adapter(model, self.lora_cfg, self.root / ADAPTER, str(self.fcfg.model.init_from))
            scores = {"step": self.state.step, **self.last_eval}
            if self.fcfg.method.name == "lora":
                merged = merge_lora(model if model is not self.state.raw else copy.deepcopy(model))
                checkpoint.save(merged, self.best_dir, tokenizer=self.tokenizer, card=self.card(),
                                extra_files={"best.json": scores})  # fmt: skip
            else:
                files.atomic_write(self.root / BEST_SCORES, json.dumps(scores, indent=2))
        distributed.barrier()

    def check_resumable(self, saved: dict[str, Any]) -> None:
        super().check_resumable(saved)
        old = dict(saved.get("finetune", {}))
        new = self.save_extra()["finetune"]
        # a setting added since the run was saved counts as its default there
        defaults = {"task": dataclasses.asdict(TaskConfig()), "method": dataclasses.asdict(MethodConfig())}
        for table in ("task", "method"):
            if isinstance(old.get(table), dict):
                old[table] = {k: defaults[table][k] for k in new[table] if k in defaults[table]} | old[table]
            if old.get(table) != new[table]:
                key = next((k for k in new[table] if (old.get(table) or {}).get(k) != new[table][k]), "?")
                raise LlmkitError(
                    f"cannot resume: [{table}] {key}={new[table].get(key)!r} differs from the saved run's "
                    f"{(old.get(table) or {}).get(key)!r}",
                    "resume with the same task and method, or start a new run in another out_dir",
                )

    def save_extra(self) -> dict[str, Any]:
        settings = self.fcfg.to_dict()
        return {"finetune": {"task": settings["task"], "method": settings["method"], "model": settings["model"]}}

    def card(self) -> ModelCard:
        f = self.fcfg
        base_card = model_card.read(f.model.init_from)
        return ModelCard(
            how_made=f"Fine-tuned by `llmkit finetune` (task {f.task.kind}, method {f.method.name}) "
            f"from the checkpoint `{f.model.init_from}`.",
            name=Path(f.model.init_from).name + f"-{f.task.kind}",
            base_model=str(f.model.init_from),
            training={
                "task": f.task.kind,
                "method": f.method.name,
                "train_file": f.task.train_file or f.task.data or ", ".join(f.task.files),
                "steps": self.state.step,
                "batch_size": self.rows,
                "lr": self.cfg.lr,
            },  # fmt: skip
            metrics={k: round(v, 4) for k, v in self.last_eval.items()},
            base_card=base_card,
        )


def lora_config(method: MethodConfig, head: list[str]) -> LoraConfig:
    """The run's LoraConfig: the task's new head (``head``, its modules) trains in full next to the
    adapter (peft's ``modules_to_save``, as its sequence- and token-classification task types do)."""
    return LoraConfig(rank=method.rank, alpha=method.alpha, dropout=method.dropout,
                      target_modules=list(method.target_modules), modules_to_save=head)  # fmt: skip


def quantize_blocks(model: nn.Module, bits: int, empty: bool = False) -> None:
    """QLoRA-style frozen base: the linear layers of the transformer blocks in int8 or int4 (group 64);
    embeddings, norms and the task head stay in float (the head trains)."""
    if bits not in (4, 8):
        raise LlmkitError(f"qlora bits={bits} is not supported", "set [method] bits to 4 or 8")
    spec = QuantSpec(f"int{bits}")
    for module in model.modules():
        if isinstance(module, Stack):
            quantize_model(module, spec, empty=empty)


def freeze(model: nn.Module, cfg: ModelConfig, train_layers: int) -> None:
    """Train only the task head and the last ``train_layers`` blocks (with the final norm when
    they include the last one); everything else keeps its weights."""
    if train_layers > cfg.n_layer:
        raise LlmkitError(
            f"train_layers={train_layers} is more than the model's {cfg.n_layer} blocks",
            f"use at most {cfg.n_layer}, or method full",
        )
    trained = [f"stack.layers.{i}." for i in range(cfg.n_layer - train_layers, cfg.n_layer)]
    if train_layers:
        trained.append("stack.final_norm.")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(HEAD_PREFIXES) or name.startswith(tuple(trained)))


def _load_base(directory: str, verify: bool = True) -> nn.Module:
    if not Path(directory).is_dir():
        raise LlmkitError(f"init_from {directory}: no such directory", "point [model] init_from at a checkpoint")
    model = checkpoint.load(directory, dtype=torch.float32, verify=verify)  # fp32 master weights; autocast does bf16
    if model.tokenizer is None:
        raise LlmkitError(
            f"init_from {directory} has no tokenizer", "save the checkpoint with its tokenizer (convert does)"
        )
    return model
