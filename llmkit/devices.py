"""Device and dtype names as users write them ("auto", "cuda:1"; "bf16"): the one place they are resolved."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> str:
    """``auto`` is CUDA when available, else the CPU; any other name is passed on as it is."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str | None) -> torch.dtype | None:
    """``fp32``, ``bf16`` or ``fp16`` as a torch dtype; None stays None (the weights as stored)."""
    return DTYPES[name] if name else None
