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

import ctypes
import functools

import torch

from llmkit import cpu_kernels

KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    """Whether the C kernels are built (else callers keep the dequantize-then-``F.linear`` path)."""
    return cpu_kernels.available()


def _flat(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    return flat if flat.dtype == torch.float32 and flat.is_contiguous() else flat.float().contiguous()


def _pointers(tensors: list[torch.Tensor | None]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr() for t in tensors))


@functools.lru_cache(maxsize=4096)
def _array(kind: type, values: tuple) -> ctypes.Array:
    """A C array holding ``values``, made once per distinct content: a model's weight pointers and
    widths repeat every step (building the array costs more than the call saves)."""
    return (kind * len(values))(*values)


def _weights(tensors: list[torch.Tensor | None]) -> ctypes.Array:
    return _array(ctypes.c_void_p, tuple(None if t is None else t.data_ptr() for t in tensors))


def _quantized_mm(
    x: torch.Tensor,
    qweights: list[torch.Tensor],
    scales: list[torch.Tensor],
    mins: list[torch.Tensor | None],
    method: str,
    outs: list[int],
    group_size: int,
) -> list[torch.Tensor]:
    flat = _flat(x)
    rows, in_features = flat.shape
    ys = [torch.empty(rows, out) for out in outs]
    status = cpu_kernels.library().llmkit_quantized_matmul(
        flat.data_ptr(), rows, in_features, 4 if method == "int4" else 8, len(qweights), _weights(qweights),
        _weights(scales), _weights(mins), _array(ctypes.c_int64, tuple(outs)), group_size, _pointers(ys),
        torch.get_num_threads(),
    )  # fmt: skip
    if status:
        raise MemoryError("the quantized matmul kernel could not allocate its input copy")
    lead = x.shape[:-1]
    return [(y if x.dtype == torch.float32 else y.to(x.dtype)).view(*lead, y.shape[1]) for y in ys]


def _bf16_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    flat = _flat(x)
    rows, in_features = flat.shape
    out_features = weight.shape[0]
    y = torch.empty(rows, out_features)
    cpu_kernels.library().llmkit_bf16_matmul(
        flat.data_ptr(), rows, in_features, weight.data_ptr(), out_features, y.data_ptr(), torch.get_num_threads()
    )
    y = y if x.dtype == torch.float32 else y.to(x.dtype)
    return y.view(*x.shape[:-1], out_features)


def dequantize(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    method: str,
    in_features: int,
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The whole stored matrix (out, in) in C: fp32, bit for bit tensors.dequantize_int4/int8's values
    (SmolLM2's matrices: tens of ms where torch's unpacking takes about 2 s), or bf16, those values rounded
    once to nearest even (as ``.to(torch.bfloat16)`` rounds them, without the fp32 copy)."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"the C dequantizer writes fp32 or bf16, not {dtype}")
    w = torch.empty(qweight.shape[0], in_features, dtype=dtype)
    cpu_kernels.library().llmkit_dequantize(
        4 if method == "int4" else 8, qweight.data_ptr(), scales.data_ptr(), None if mins is None else mins.data_ptr(),
        qweight.shape[0], in_features, group_size, w.data_ptr(), torch.get_num_threads(), dtype == torch.bfloat16,
    )  # fmt: skip
    return w


# The ops compiled graphs call. Defined with torch.library's low-level API: torch.library.custom_op's
# wrapper costs about 13 us a call more (33 against 23, a 192 x 576 int4 matrix, 2 threads), and a
# decoding step of SmolLM2 makes 121 such calls (q/k/v and gate/up fused).
_LIBRARY = torch.library.Library("llmkit", "DEF")
_LIBRARY.define(
    "quantized_mm(Tensor x, Tensor[] qweights, Tensor[] scales, Tensor?[] mins, str method, int[] outs, "
    "int group_size) -> Tensor[]"
)
_LIBRARY.define("bf16_mm(Tensor x, Tensor weight) -> Tensor")
_LIBRARY.impl("quantized_mm", _quantized_mm, "CPU")
_LIBRARY.impl("bf16_mm", _bf16_mm, "CPU")


@torch.library.register_fake("llmkit::quantized_mm")
def _(x, qweights, scales, mins, method, outs, group_size):
    return [x.new_empty((*x.shape[:-1], out)) for out in outs]


@torch.library.register_fake("llmkit::bf16_mm")
def _(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def quantized_mm(*args) -> list[torch.Tensor]:
    """``_quantized_mm(x, qweights, scales, mins, method, outs, group_size)``: x (..., in) @ W.T for each
    of several W of one format (llmkit.quantize.tensors'), all reading x, in one call: [(..., out_i)].
    Compiled graphs get the registered op."""
    return (torch.ops.llmkit.quantized_mm if torch.compiler.is_compiling() else _quantized_mm)(*args)


def bf16_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., in) @ W.T for a contiguous bf16 W (out, in): (..., out) in ``x``'s dtype."""
    return (torch.ops.llmkit.bf16_mm if torch.compiler.is_compiling() else _bf16_mm)(x, weight)
