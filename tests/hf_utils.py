"""Helpers shared by the tests that compare llmkit with transformers."""

from __future__ import annotations

import torch


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every parameter: norm gains leave 1 and biases leave 0, so each tensor matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Positions (or query rows of (B, H, T, S) maps) that hold real tokens."""
    if x.dim() == 4:
        x = x.transpose(1, 2)  # (B, T, H, S)
    return x[mask.bool()]
