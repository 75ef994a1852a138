"""Weight-only integer formats as pure tensor functions: int8 and int4, per group, symmetric or asymmetric.

A row of a weight matrix (an output channel) is cut into groups of ``group_size`` consecutive input
weights (the last group of a row may be shorter); each group has an fp16 ``scale`` and, in the
asymmetric schemes, an fp16 ``min``. A weight is stored as an integer ``q`` and read back as

- int4 symmetric:  w = scale * (q - 8), q in 1..15 (absmax / 7 per group; 0 is unused so both signs
  reach absmax); GGUF's Q4_0 is this formula with q in 0..15, and loads as is;
- int4 asymmetric: w = scale * q + min, q in 0..15, scale = (max - min) / 15: GGUF's Q4_1;
- int8 symmetric:  w = scale * q, q int8 in -127..127 (absmax / 127): GGUF's Q8_0 with groups of 32,
  and llmkit's default with one group per row (``group_size`` None);
- int8 asymmetric: w = scale * q + min, q uint8 in 0..255.

Scales are rounded up to fp16 (and minimums down) before ``q`` is computed with the rounded values, so
the stored grid still spans every weight of its group and |w - read(q)| <= scale / 2. fp16 scales are
what GGUF stores: a file's scales, minimums and integers are copied bit for bit
(``llmkit.gguf.quantized``), and ``scale * q`` is exact in fp32, so a model read from a Q4_0/Q4_1/Q8_0
file has exactly the file's weights.

int4 layout (``pack_int4``): a row is cut into chunks of 64 weights stored in 32 bytes; the
little-endian 16-bit word i (i < 16) of a chunk holds weight 16k + i of the chunk in bits 4k..4k+3
(k < 4). The CPU kernels (llmkit/cpu_matmul.c) get a chunk's four 16-weight vectors from one load by
shifts. Rows are padded with zero nibbles to whole chunks: (out, ceil(in / 64) * 32) bytes.

Functions take and return tensors with any leading dimensions (a matrix, or the rows of an
embedding looked up for a batch); the quantized dimension is the last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INT8_MAX = 127
INT4_MAX = 7
INT4_ZERO = 8  # symmetric int4 stores q + 8, so q in [-7, 7] becomes 1..15
CHUNK = 64  # int4 weights per 32-byte chunk
LEVELS = {"int4": 15, "int8": 255}  # asymmetric: the grid's steps between min and max


def n_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


def packed_width(in_features: int) -> int:
    """Bytes per row of a packed int4 matrix: whole 64-weight chunks of 32 bytes."""
    return -(-in_features // CHUNK) * (CHUNK // 2)


def _grouped(w: torch.Tensor, group_size: int, value: float = 0.0) -> torch.Tensor:
    """(..., in) -> (..., groups, group_size), the last group padded with ``value``."""
    in_features = w.shape[-1]
    groups = n_groups(in_features, group_size)
    w = F.pad(w, (0, groups * group_size - in_features), value=value)
    return w.reshape(*w.shape[:-1], groups, group_size)


def _per_weight(t: torch.Tensor, in_features: int, group_size: int) -> torch.Tensor:
    """(..., groups) -> (..., in): each group's value repeated over its weights."""
    return t.repeat_interleave(group_size, dim=-1)[..., :in_features]


def _safe(scales: torch.Tensor) -> torch.Tensor:
    # a zero scale (an all-zero or constant group) stores q = 0 (or the min) instead of dividing by zero
    return torch.where(scales == 0, torch.ones_like(scales), scales)


# ---- choosing scales and integers -----------------------------------------------------------
def _fp16_toward(t: torch.Tensor, direction: float) -> torch.Tensor:
    """fp32 ``t`` -> the nearest fp16 on the side of ``direction`` (+inf: at least t, -inf: at most t)."""
    h = t.half()
    off = h.float() < t if direction > 0 else h.float() > t
    return torch.where(off, torch.nextafter(h, torch.full_like(h, direction)), h)


def symmetric_grid(w: torch.Tensor, group_size: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w (..., in) -> q int16 in [-qmax, qmax] (..., in), fp16 scales absmax / qmax (..., groups)."""
    w = w.detach().float()
    scales = _fp16_toward(_grouped(w, group_size).abs().amax(-1) / qmax, float("inf"))
    step = _per_weight(_safe(scales.float()), w.shape[-1], group_size)
    q = torch.round(w / step).clamp(-qmax, qmax).to(torch.int16)
    return q, scales


def asymmetric_grid(w: torch.Tensor, group_size: int, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (..., in) -> q int16 in [0, levels] (..., in), fp16 scales (max - min) / levels and fp16 mins
    (..., groups), q computed against the rounded min and scale."""
    w = w.detach().float()
    low = _grouped(w, group_size, float("inf")).amin(-1)
    high = _grouped(w, group_size, float("-inf")).amax(-1)
    mins = _fp16_toward(low, float("-inf"))
    scales = _fp16_toward((high - mins.float()) / levels, float("inf"))
    step = _per_weight(_safe(scales.float()), w.shape[-1], group_size)
    offset = _per_weight(mins.float(), w.shape[-1], group_size)
    q = torch.round((w - offset) / step).clamp(0, levels).to(torch.int16)
    return q, scales, mins


def read_back(
    q: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    in_features: int,
    group_size: int,
    zero: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The stored weights: scale * (q - zero) (symmetric) or scale * q + min (asymmetric), per group by
    broadcasting (no per-weight copy of the scales), computed in fp32 (exact but for the one addition of
    min) and for 16-bit ``dtype`` in ``dtype`` itself, as the layers run: a training step's dequantized
    head must not cost an fp32 matrix and its temporaries."""
    work = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
    grouped = _grouped(q[..., :in_features].to(work), group_size)  # (..., G, g), padded with 0
    if mins is None:
        w = (grouped - zero) * scales.to(work)[..., None]
    else:
        w = grouped * scales.to(work)[..., None] + mins.to(work)[..., None]
    return w.flatten(-2)[..., :in_features].to(dtype)


# ---- int4 packing ---------------------------------------------------------------------------
def pack_int4(nibbles: torch.Tensor) -> torch.Tensor:
    """Integers 0..15 (..., in) -> uint8 (..., packed_width(in)) in the chunk layout (module docstring)."""
    in_features = nibbles.shape[-1]
    chunks = -(-in_features // CHUNK)
    n = F.pad(nibbles.to(torch.int32), (0, chunks * CHUNK - in_features))
    n = n.reshape(*n.shape[:-1], chunks, 4, 16)  # [..., chunk, k, i] = weight 16k + i
    words = n[..., 0, :] | (n[..., 1, :] << 4) | (n[..., 2, :] << 8) | (n[..., 3, :] << 12)  # (..., C, 16)
    pair = torch.stack([words & 0xFF, words >> 8], dim=-1)  # little-endian bytes of each word
    return pair.to(torch.uint8).reshape(*nibbles.shape[:-1], chunks * CHUNK // 2)


def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """uint8 (..., packed_width) -> the integers 0..15 as uint8 (..., in): the inverse of ``pack_int4``."""
    b = packed.to(torch.int32).reshape(*packed.shape[:-1], -1, 16, 2)  # (..., C, word, byte)
    words = b[..., 0] | (b[..., 1] << 8)  # (..., C, 16)
    n = torch.stack([(words >> (4 * k)) & 15 for k in range(4)], dim=-2)  # (..., C, k, i)
    return n.reshape(*packed.shape[:-1], -1)[..., :in_features].to(torch.uint8)


# ---- the formats ----------------------------------------------------------------------------
def quantize_int4(
    w: torch.Tensor, group_size: int, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """w (..., in) -> packed uint8 (..., packed_width(in)), fp16 scales (..., groups), fp16 mins or None."""
    if symmetric:
        q, scales = symmetric_grid(w, group_size, INT4_MAX)
        return pack_int4(q + INT4_ZERO), scales, None
    q, scales, mins = asymmetric_grid(w, group_size, LEVELS["int4"])
    return pack_int4(q), scales, mins


def dequantize_int4(
    packed: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    in_features: int,
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The stored int4 weights (..., in) as ``dtype`` (``read_back``)."""
    q = unpack_int4(packed, in_features)
    return read_back(q, scales, mins, in_features, group_size, INT4_ZERO, dtype)


def quantize_int8(
    w: torch.Tensor, group_size: int | None = None, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """w (..., in) -> q (int8, or uint8 when asymmetric) (..., in), fp16 scales (..., groups), fp16 mins or
    None; ``group_size`` None: one group per row (per output channel)."""
    group_size = group_size or w.shape[-1]
    if symmetric:
        q, scales = symmetric_grid(w, group_size, INT8_MAX)
        return q.to(torch.int8), scales, None
    q, scales, mins = asymmetric_grid(w, group_size, LEVELS["int8"])
    return q.to(torch.uint8), scales, mins


def dequantize_int8(
    q: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    group_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The stored int8 weights (..., in) as ``dtype`` (``read_back``)."""
    in_features = q.shape[-1]
    return read_back(q, scales, mins, in_features, group_size or in_features, 0, dtype)
