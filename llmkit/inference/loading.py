"""A checkpoint loaded for inference on the device and in the dtype a user names ("auto", "bf16", ...)."""

from __future__ import annotations

import os

import torch
from torch import nn

from llmkit import checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> str:
    """``auto`` is CUDA when available, else the CPU; any other name is passed on as it is."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(directory: str | os.PathLike, device: str = "auto", dtype: str | None = None) -> nn.Module:
    """``checkpoint.load`` on ``resolve_device(device)``, cast to ``dtype`` (fp32, bf16, fp16; None: as stored)."""
    return checkpoint.load(directory, device=resolve_device(device), dtype=DTYPES[dtype] if dtype else None)
