"""Weight-only integer formats as pure tensor functions: int8 per output channel, int4 per group.

Both are symmetric absmax schemes (no zero point): a row (int8) or a group of ``group_size``
consecutive input weights of a row (int4) shares one fp32 scale ``absmax / qmax``, and a weight is
stored as ``q = round(w / scale)`` clamped to [-qmax, qmax], so |w - q * scale| <= scale / 2.

- int8: q in [-127, 127] (-128 unused, so the range is symmetric and -q never overflows); an int8
  matrix (out, in) and scales (out,).
- int4: q in [-7, 7] (-8 unused, for the same reason: the scale is absmax / 7 and both signs reach
  absmax); stored as the nibble q + 8 (1..15), two per byte along the input dimension, the even
  column in the low nibble: a uint8 matrix (out, ceil(in / 2)) and scales (out, ceil(in / group)).
  When ``group_size`` does not divide ``in``, each row's last group is shorter (the quickstart's
  feed-forward width, 352, is not a multiple of 64 or 128), and an odd ``in`` pads the last byte
  with the nibble of 0.

Functions take and return tensors with any leading dimensions (a matrix, or the rows of an
embedding looked up for a batch); the quantized dimension is the last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INT8_MAX = 127
INT4_MAX = 7
INT4_OFFSET = 8  # stored nibble = q + 8, so q in [-7, 7] becomes 1..15


def absmax_scales(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """fp32 scales absmax / qmax over the last dimension of ``w``."""
    return w.detach().float().abs().amax(dim=-1) / qmax


def round_to_grid(w: torch.Tensor, scales: torch.Tensor, qmax: int) -> torch.Tensor:
    """round(w / scale) clamped to [-qmax, qmax], as int8; ``scales`` broadcast over the last dimension.
    A zero scale (an all-zero row or group) stores zeros instead of dividing by zero."""
    safe = torch.where(scales == 0, torch.ones_like(scales), scales)
    return torch.round(w.detach().float() / safe[..., None]).clamp(-qmax, qmax).to(torch.int8)


# ---- int8, per output channel ---------------------------------------------------------------
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (..., in) -> q int8 (..., in), scales fp32 (...): one scale per row (output channel)."""
    scales = absmax_scales(w, INT8_MAX)
    return round_to_grid(w, scales, INT8_MAX), scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q (..., in), scales (...) -> q * scale in ``dtype`` (computed in ``dtype``, as the layers run)."""
    return q.to(dtype) * scales.to(dtype)[..., None]


# ---- int4, per group of the input dimension -------------------------------------------------
def n_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(..., in) -> (..., groups, group_size), the last group padded with zeros (which leave absmax as is)."""
    in_features = w.shape[-1]
    groups = n_groups(in_features, group_size)
    w = F.pad(w, (0, groups * group_size - in_features))
    return w.reshape(*w.shape[:-1], groups, group_size)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 q in [-8, 7] (..., in) -> uint8 (..., ceil(in / 2)): column 2j in the low nibble of byte j,
    column 2j + 1 in the high one, each stored as q + 8."""
    nibbles = (q.to(torch.int16) + INT4_OFFSET).to(torch.uint8)
    if nibbles.shape[-1] % 2:
        nibbles = F.pad(nibbles, (0, 1), value=INT4_OFFSET)  # the nibble of q = 0
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """uint8 (..., ceil(in / 2)) -> int8 q (..., in): the inverse of ``pack_int4``."""
    low = (packed & 0x0F).to(torch.int8) - INT4_OFFSET
    high = (packed >> 4).to(torch.int8) - INT4_OFFSET
    q = torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
    return q[..., :in_features]


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w (..., in) -> packed uint8 (..., ceil(in / 2)), scales fp32 (..., groups): one scale per group of
    ``group_size`` consecutive input weights of a row."""
    grouped = _grouped(w.detach().float(), group_size)  # (..., G, g)
    scales = absmax_scales(grouped, INT4_MAX)  # (..., G)
    q = round_to_grid(grouped, scales, INT4_MAX).flatten(-2)[..., : w.shape[-1]]  # (..., in)
    return pack_int4(q), scales


def dequantize_int4(
    packed: torch.Tensor, scales: torch.Tensor, in_features: int, group_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """packed (..., ceil(in / 2)), scales (..., groups) -> q * scale of each weight's group, (..., in)."""
    q = _grouped(unpack_int4(packed, in_features).to(dtype), group_size)  # (..., G, g)
    return (q * scales.to(dtype)[..., None]).flatten(-2)[..., :in_features]


# ---- the CPU int4 kernel's layout -----------------------------------------------------------
def int4_kernel_layout(q: torch.Tensor, scales: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The operands of ``torch._weight_int4pack_mm_for_cpu`` for q int8 (out, in), scales (out, groups).

    The kernel computes ``(q_stored - 8) * scale + zero`` per group (tinygemm's formula), so the nibble
    q + 8 with zero = 0 reproduces our values. It needs ``in`` to be a multiple of the group size: a
    shorter last group is padded with q = 0, and the caller pads the input with zeros to match.
    """
    padded = _grouped(q, group_size).flatten(-2)  # (out, G * g), zeros after column in
    weight = torch._convert_weight_to_int4pack_for_cpu((padded.to(torch.int32) + INT4_OFFSET), 2)
    scale_and_zero = torch.stack([scales.t(), torch.zeros_like(scales.t())], dim=-1)  # (G, out, 2)
    return weight, scale_and_zero.contiguous()
