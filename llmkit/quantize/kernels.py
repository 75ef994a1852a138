"""Fused dequantize-and-multiply on the CPU for inputs of few rows (decoding steps): the C kernels of
llmkit/cpu_matmul.c, called through ctypes, registered as torch custom ops so that a torch.compile'd
decoding step calls them as well (dynamo cannot trace a ctypes call; it can call an op).

Why our own kernels: for one row, a matrix product is a pass over the weights, bound by memory
bandwidth, so the fewer bytes per weight the faster, provided the weights are never written out as
floats. torch's packed CPU kernels (``_weight_int4pack_mm_for_cpu``, ``_weight_int8pack_mm``) are fast
for bf16 activations only, take neither minimums nor fp16 scales, and need a second copy of int4
weights in their layout; the C kernels read the stored format directly (docs/quantization.md has the
measurements). Each op takes fp32 or bf16 ``x`` (..., in) and returns ``x``'s dtype; the arithmetic is
fp32 throughout.

Eager calls go straight to the C function (the op dispatcher costs a few microseconds a call, a
decoding step makes hundreds); compiled graphs call the registered op.
"""

from __future__ import annotations

import torch

from llmkit import cpu_kernels

KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    """Whether the C kernels are built (else callers keep the dequantize-then-``F.linear`` path)."""
    return cpu_kernels.available()


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).to(torch.float32).contiguous()


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _int_mm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    method: str,
    out_features: int,
    group_size: int,
) -> torch.Tensor:
    lib = cpu_kernels.library()
    flat = _flat(x)
    y = torch.empty(flat.shape[0], out_features, dtype=torch.float32)
    kernel = lib.llmkit_int4_matmul if method == "int4" else lib.llmkit_int8_matmul
    args = (flat.data_ptr(), flat.shape[0], flat.shape[1], qweight.data_ptr(), scales.data_ptr(), _pointer(mins))
    if kernel(*args, out_features, group_size, y.data_ptr(), torch.get_num_threads()):
        raise MemoryError("the quantized matmul kernel could not allocate its input copy")
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


def _bf16_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    flat = _flat(x)
    out_features = weight.shape[0]
    y = torch.empty(flat.shape[0], out_features, dtype=torch.float32)
    cpu_kernels.library().llmkit_bf16_matmul(
        flat.data_ptr(), flat.shape[0], flat.shape[1], weight.data_ptr(), out_features, y.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


@torch.library.custom_op("llmkit::int_mm", mutates_args=())
def int_mm_op(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    method: str,
    out_features: int,
    group_size: int,
) -> torch.Tensor:
    return _int_mm(x, qweight, scales, mins, method, out_features, group_size)


@int_mm_op.register_fake
def _(x, qweight, scales, mins, method, out_features, group_size):
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("llmkit::bf16_mm", mutates_args=())
def bf16_mm_op(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _bf16_mm(x, weight)


@bf16_mm_op.register_fake
def _(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def int_mm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    method: str,
    out_features: int,
    group_size: int,
) -> torch.Tensor:
    """x (..., in) @ W.T for W stored as int4/int8 (llmkit.quantize.tensors' formats): (..., out)."""
    call = int_mm_op if torch.compiler.is_compiling() else _int_mm
    return call(x, qweight, scales, mins, method, out_features, group_size)


def bf16_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., in) @ W.T for a contiguous bf16 W (out, in): (..., out) in ``x``'s dtype."""
    return (bf16_mm_op if torch.compiler.is_compiling() else _bf16_mm)(x, weight)
