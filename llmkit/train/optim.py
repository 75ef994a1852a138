"""AdamW with weight decay on matrices only, and the learning-rate schedule (warmup + cosine)."""

from __future__ import annotations

import math

import torch
from torch import nn

from llmkit.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups, as nanoGPT and GPT-3 split them: every matrix (>= 2-D: linear weights, embedding
    tables) decays; vectors (norm gains, biases) do not. Tied weights appear once
    (``named_parameters`` skips the alias)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; the fused kernel (one op for all tensors) on CPU and CUDA,
    the multi-tensor (foreach) one elsewhere. The lr is set every step by ``lr_at``."""
    device = next(model.parameters()).device
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=lr_at(0, cfg),
        betas=(cfg.beta1, cfg.beta2),
        fused=fused or None,
        foreach=None if fused else True,
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based), as nanoGPT schedules it.

    Warmup: ``lr * (step + 1) / (warmup_steps + 1)``, rising linearly from near 0 to ``lr`` at
    ``step = warmup_steps``. Then cosine decay: ``min_lr + (lr - min_lr) * (1 + cos(pi * r)) / 2``
    with ``r = (step - warmup_steps) / (steps - warmup_steps)``, reaching ``min_lr`` at ``step = steps``
    and staying there beyond.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step >= cfg.steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / (cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
