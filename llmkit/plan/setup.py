"""The setting of one training step, as the planner's memory formulas take it (one object, not ten arguments)."""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.plan.finetune import Finetune
from llmkit.plan.precision import Precision


@dataclass(frozen=True)
class TrainingSetup:
    """``batch`` sequences of ``seq`` tokens per GPU, in ``precision``, with ``optimizer``; activation
    ``recompute`` (none, selective, full) and the ``attention`` kernel (math, flash) on ``device``
    ("cuda" or "cpu": their kernels keep different tensors); data parallel over ``gpus`` with ZeRO stage
    ``zero``; ``overhead``: the fraction added for the allocator and the framework; ``finetune``: None
    for pretraining, else full, LoRA or QLoRA fine-tuning (llmkit.plan.finetune)."""

    batch: int
    seq: int
    precision: Precision
    optimizer: str = "adamw"
    recompute: str = "none"
    attention: str = "flash"
    gpus: int = 1
    zero: int = 0
    overhead: float = 0.0
    device: str = "cuda"
    finetune: Finetune | None = None
