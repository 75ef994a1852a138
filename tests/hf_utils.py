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


def assert_same_tensors(original_dir, round_trip_dir) -> None:
    """Both directories' model.safetensors hold the same names and bit-identical tensors."""
    from safetensors.torch import load_file

    original = load_file(str(original_dir / "model.safetensors"))
    back = load_file(str(round_trip_dir / "model.safetensors"))
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name
