"""Plan a model before building it: parameters by component, memory for inference and training, FLOPs,
GPU-days, and compute-optimal sizes (Chinchilla).

Standard library only (layer L0): ``llmkit plan`` answers in milliseconds, without torch. Everything
here is a closed form of the ModelConfig; ``tests/test_plan.py`` checks the parameter counts against
built models and the memory against measured training steps (``llmkit.train.memory``).
Bytes are decimal (1 GB = 1e9 bytes), as hardware and papers quote them.

- ``parameters``: parameters by component, matmul weights, a model from a bare count.
- ``precision``: bytes per value for each precision and optimizer.
- ``activations``: what a training step keeps for backward (Korthikanti et al. 2022, generalised).
- ``memory``: inference (weights + KV cache) and training memory per GPU, ZeRO sharding.
- ``finetune``: full, LoRA and QLoRA fine-tuning: adapted layers, adapter parameters, frozen base bytes.
- ``compute``: FLOPs per token, PF-days, GPU-days, Chinchilla's compute-optimal N and D.
- ``report``: the plan as text tables (``render``), measured bytes beside it, ``describe``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmkit.errors import LlmkitError
from llmkit.plan.activations import Activations, activation_memory, layer_activations
from llmkit.plan.compute import (
    CHINCHILLA_FIT,
    GPU_PEAK_FLOPS,
    PF_DAY,
    Compute,
    Optimum,
    chinchilla_loss,
    compute,
    flops_per_token,
    optimal_by_parametric_fit,
    optimal_by_tokens_rule,
    optimum,
)
from llmkit.plan.finetune import Finetune, lora_parameters
from llmkit.plan.memory import InferenceMemory, TrainingMemory, inference_memory, kv_cache_bytes, training_memory
from llmkit.plan.parameters import ModelSize, count_parameters, matmul_weights, parse_count
from llmkit.plan.precision import ATTENTION, DEVICES, OPTIMIZERS, PRECISIONS, RECOMPUTE, Precision, optimizer_bytes
from llmkit.plan.report import describe, render, render_measured
from llmkit.plan.setup import TrainingSetup

__all__ = [
    "ATTENTION",
    "DEVICES",
    "Finetune",
    "CHINCHILLA_FIT",
    "GPU_PEAK_FLOPS",
    "OPTIMIZERS",
    "PF_DAY",
    "PRECISIONS",
    "RECOMPUTE",
    "Activations",
    "Compute",
    "InferenceMemory",
    "ModelSize",
    "Optimum",
    "Plan",
    "PlanOptions",
    "Precision",
    "TrainingMemory",
    "TrainingSetup",
    "activation_memory",
    "chinchilla_loss",
    "compute",
    "count_parameters",
    "describe",
    "flops_per_token",
    "inference_memory",
    "kv_cache_bytes",
    "layer_activations",
    "lora_parameters",
    "make_plan",
    "matmul_weights",
    "optimal_by_parametric_fit",
    "optimal_by_tokens_rule",
    "optimizer_bytes",
    "optimum",
    "parse_count",
    "render",
    "render_measured",
    "training_memory",
]


@dataclass
class PlanOptions:
    """What ``llmkit plan`` is asked; see ``llmkit plan --help``."""

    batch: int = 1
    seq: int | None = None  # None: the model's context window
    precision: str = "mixed"
    optimizer: str = "adamw"
    recompute: str = "none"
    attention: str = "flash"
    device: str = "cuda"  # "cpu": PyTorch's CPU kernels (llmkit plan --measure on a CPU)
    gpus: int = 1
    zero: int = 0
    tokens: float | None = None
    mfu: float = 0.4
    overhead: float = 0.1
    flops: float | None = None
    finetune: Finetune | None = None  # None: pretraining; full, lora or qlora fine-tuning
    law: dict[str, float] | None = None  # a fitted L(N, D) (E, A, B, alpha, beta) for the optimum; None: Chinchilla's
    law_source: str | None = None  # where ``law`` came from, printed with the optimum

    def check(self) -> None:
        for name in ("batch", "gpus"):
            if getattr(self, name) < 1:
                raise LlmkitError(f"--{name} {getattr(self, name)} must be >= 1", f"change --{name}")
        if self.seq is not None and self.seq < 1:
            raise LlmkitError(f"--seq {self.seq} must be >= 1", "change --seq")
        choices = {
            "precision": PRECISIONS,
            "optimizer": OPTIMIZERS,
            "recompute": RECOMPUTE,
            "attention": ATTENTION,
            "device": DEVICES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LlmkitError(
                    f"--{name} {getattr(self, name)} is not valid", f"choose one of: {', '.join(allowed)}"
                )
        if self.zero not in (0, 1, 2, 3):
            raise LlmkitError(f"--zero {self.zero} is not a ZeRO stage", "choose 0 (off), 1, 2 or 3")
        if not 0 < self.mfu <= 1:
            raise LlmkitError(f"--mfu {self.mfu} must be in (0, 1]", "e.g. --mfu 0.4 for 40% of peak")
        if not 0 <= self.overhead < 10:
            raise LlmkitError(f"--overhead {self.overhead} must be a fraction >= 0", "e.g. --overhead 0.1")
        for name in ("tokens", "flops"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise LlmkitError(f"--{name} {value} must be a positive number", f"e.g. --{name} 3e11")
        if self.finetune is not None:
            self.finetune.check()

    def training_setup(self, seq: int) -> TrainingSetup:
        """The options as the memory formulas take them, for sequences of ``seq`` tokens."""
        return TrainingSetup(
            batch=self.batch, seq=seq, precision=PRECISIONS[self.precision], optimizer=self.optimizer,
            recompute=self.recompute, attention=self.attention, gpus=self.gpus, zero=self.zero,
            overhead=self.overhead, device=self.device, finetune=self.finetune,
        )  # fmt: skip


@dataclass
class Plan:
    """Everything ``llmkit plan`` prints; ``to_dict`` is its JSON."""

    model: ModelSize | None
    options: PlanOptions
    seq: int
    inference: InferenceMemory | None = None
    training: TrainingMemory | None = None
    compute: Compute | None = None
    optimum: Optimum | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        options = {k: v for k, v in vars(self.options).items() if k not in ("finetune", "law", "law_source")}
        out: dict = {"options": {**options, "seq": self.seq}}
        if self.options.finetune is not None:
            ft = self.options.finetune
            out["finetune"] = {"method": ft.method}
            if ft.adapted:
                out["finetune"].update(rank=ft.rank, targets=list(ft.targets))
            if ft.method == "qlora":
                out["finetune"].update(quant=ft.quant, group_size=ft.group_size)
        if self.model is not None:
            m = self.model
            out["model"] = {"source": m.source, "assumed_shape": m.assumed_shape, "architecture": describe(m.cfg)}
            out["parameters"] = {"total": m.parameters, "matmul": m.matmul_parameters, "by_component": m.components}
        if self.inference is not None:
            i = self.inference
            out["inference_bytes"] = dict(weights=i.weights, kv_cache=i.kv_cache, overhead=i.overhead, total=i.total)
        if self.training is not None:
            tr, act = self.training, self.training.activations
            if tr.trainable is not None:
                out.setdefault("finetune", {})["trainable_parameters"] = tr.trainable
            out["training_bytes_per_gpu"] = dict(
                weights=tr.weights,
                master_weights=tr.master_weights,
                gradients=tr.gradients,
                optimizer_states=tr.optimizer_states,
                activations_stored=act.stored,
                activations_working=act.working,  # the larger of the two below
                activations_working_loss=act.loss_working,
                activations_working_block=act.layer_working,
                activations=act.total,
                per_layer_activations=act.per_layer,
                peak_without_overhead=tr.tensors_peak,
                overhead=tr.overhead,
                peak=tr.peak,
            )
        if self.compute is not None:
            c = self.compute
            out["compute"] = dict(
                tokens=c.tokens,
                tokens_from_20_per_parameter=c.tokens_from_rule,
                flops_per_token_6n=c.flops_per_token_6n,
                flops_per_token=c.flops_per_token,
                flops_6nd=c.flops_6nd,
                flops=c.flops,
                pf_days=c.pf_days,
                pf_days_6nd=c.pf_days_6nd,
                mfu=c.mfu,
                gpus=c.gpus,
                days=c.days,
            )
        if self.optimum is not None:
            o = self.optimum
            out["compute_optimal"] = {
                "flops": o.flops,
                "tokens_rule": {"parameters": o.rule_parameters, "tokens": o.rule_tokens, "loss": o.rule_loss},
                "parametric_fit": {"parameters": o.fit_parameters, "tokens": o.fit_tokens, "loss": o.fit_loss},
                "law": {"source": o.law_source, **o.law},
            }
        out["notes"] = self.notes
        return out


def make_plan(model: ModelSize | None, opts: PlanOptions) -> Plan:
    """The plan for ``model`` (None: only the compute-optimal sizes for ``opts.flops``).

    Order: check the options -> sequence length (the context window unless given) -> inference memory
    -> training memory (unless the precision is inference-only) -> compute for the token budget ->
    compute-optimal sizes for ``opts.flops``.
    """
    opts.check()
    if model is None:
        if opts.flops is None:
            raise LlmkitError("nothing to plan", "name a model (preset, config file, or a count like 7e9) or --flops")
        return Plan(None, opts, opts.seq or 0, optimum=optimum(opts.flops, opts.law, opts.law_source))
    cfg = model.cfg
    seq = opts.seq or cfg.max_seq_len
    if seq > cfg.max_seq_len and cfg.pos == "learned" and not model.assumed_shape:
        raise LlmkitError(
            f"--seq {seq} exceeds the context window of {cfg.max_seq_len} (learned positions)",
            "lower --seq or raise --model.max_seq_len",
        )
    precision = PRECISIONS[opts.precision]
    plan = Plan(model, opts, seq)
    plan.inference = inference_memory(model, opts.batch, seq, precision, opts.overhead)
    if precision.trainable:
        plan.training = training_memory(model, opts.training_setup(seq))
    else:
        plan.notes.append(f"{precision.name} is inference-only: no training memory")
    plan.compute = compute(model, seq, opts.tokens, opts.mfu, opts.gpus)
    if opts.flops is not None:
        plan.optimum = optimum(opts.flops, opts.law, opts.law_source)
    if model.assumed_shape:
        plan.notes.append(
            f"shape assumed from the count (GPT-3-like): {describe(cfg)}; it sizes activations, "
            "the KV cache and attention FLOPs"
        )
    return plan
