"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers") as pure tensor functions, writing llmkit's stored int8/int4 formats.

A linear layer's output error on calibration inputs X (tokens x in) is ||X W^T - X Q^T||^2, a
quadratic form in each row's weight error with the Hessian H = 2 X^T X shared by every row. GPTQ
quantizes the columns (input channels) one at a time, left to right, and after rounding column i
moves the columns still in float so that they absorb its error optimally (Optimal Brain
Surgeon's update with the inverse Hessian of the columns not yet quantized):

    err = (w_i - q_i) / [H_F^-1]_ii,    w_F <- w_F - err * [H_F^-1]_i,F

The inverses H_F^-1 of the shrinking sets F are the rows of the upper Cholesky factor of H^-1
(the paper's section 4, "Step 3"), so one factorisation serves every column; columns are handled in
blocks, with the updates to the columns after a block applied once per block ("Step 2", lazy batch
updates). Per-group grids (fp16 scale, and min when asymmetric) are chosen, as in the paper's
reference code, when the quantization reaches a group's first column, from the group's weights as
updated so far; the integers and grids are exactly what llmkit.quantize.tensors stores, so a GPTQ
matrix loads and runs as any other (GPTQ changes which integers are stored, never the format).

With a diagonal H no column's error moves another (H^-1 is diagonal too) and GPTQ is
round-to-nearest: ``gptq_quantize`` then returns what ``tensors.quantize_int4/int8`` return.
"""

from __future__ import annotations

import torch

from llmkit.quantize import tensors

DAMP = 0.01  # the paper's dampening: 1% of the mean diagonal added to H, so that it inverts stably
BLOCK = 128  # columns per lazy-update block (the paper's B); a multiple of every group size


class Hessian:
    """H = 2/n * sum of x x^T over the n input rows seen, accumulated in fp64 batch by batch."""

    def __init__(self, in_features: int) -> None:
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        """Add the input rows ``x`` (..., in) of one batch: their product in fp32 (a batch's few thousand
        rows lose nothing that matters there, and fp64 matmuls cost 2-4x more), summed in fp64."""
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.sum += (x.T @ x).double()
        self.rows += x.shape[0]

    def value(self) -> torch.Tensor:
        return 2 * self.sum / max(self.rows, 1)


def inverse_cholesky(h: torch.Tensor, damp: float = DAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """H (in, in) -> (upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, dead columns).

    A column whose input is always zero ("dead": diag 0) gets a 1 on the diagonal, so H inverts; its
    weights reach no output, and ``gptq_quantize`` sets them to 0 first. Row i of U, divided by U_ii,
    is [H_F^-1]_i,F / [H_F^-1]_ii for F = columns i.. (the OBS update of the module docstring).
    """
    h = h.to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    diag = torch.diagonal(h)
    diag += damp * diag.mean()
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True), dead


def group_grid(w: torch.Tensor, method: str, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fp16 grid of one group of columns w (out, g): scales (out,) and mins (out,) or None, as
    llmkit.quantize.tensors chooses them (absmax, or min and max, rounded outward to fp16)."""
    width = w.shape[1]
    if symmetric:
        qmax = tensors.INT4_MAX if method == "int4" else tensors.INT8_MAX
        _, scales = tensors.symmetric_grid(w, width, qmax)
        return scales[:, 0], None
    _, scales, mins = tensors.asymmetric_grid(w, width, tensors.LEVELS[method])
    return scales[:, 0], mins[:, 0]


def round_to_grid(
    w: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One column w (out,) on its group's grid -> (integers q (out,), the values they store (out,)).

    The same rounding as llmkit.quantize.tensors: symmetric q = round(w / scale) in [-qmax, qmax], read
    as scale * q; asymmetric q = round((w - min) / scale) in [0, levels], read as scale * q + min.
    """
    step = scales.float()
    step = torch.where(step == 0, torch.ones_like(step), step)  # a constant group: q = 0 (tensors._safe)
    if mins is None:
        qmax = tensors.INT4_MAX if method == "int4" else tensors.INT8_MAX
        q = torch.round(w / step).clamp(-qmax, qmax)
        return q, scales.float() * q
    q = torch.round((w - mins.float()) / step).clamp(0, tensors.LEVELS[method])
    return q, scales.float() * q + mins.float()


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    method: str,
    group_size: int | None,
    symmetric: bool,
    damp: float = DAMP,
    block: int = BLOCK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """An (out, in) weight and its inputs' Hessian (in, in) -> the stored format of
    ``tensors.quantize_int4`` / ``quantize_int8`` (int4: packed uint8; int8: int8 or uint8), fp16
    scales (out, groups) and fp16 mins (out, groups) or None.

    Order: dead columns zeroed -> H damped and inverted (``inverse_cholesky``) -> for each block of
    columns, each column: its group's grid chosen at the group's first column -> rounded -> its error
    spread over the block's later columns -> at the block's end, the block's errors spread over every
    later column. ``group_size`` None: one group per row (int8's per-channel default).
    """
    out_features, in_features = weight.shape
    group = group_size or in_features
    block = max(block // group, 1) * group  # groups never straddle two blocks
    u, dead = inverse_cholesky(hessian, damp)
    w = weight.detach().to(torch.float64).clone()
    w[:, dead] = 0
    q = torch.zeros(out_features, in_features, dtype=torch.int16)
    scales = torch.zeros(out_features, tensors.n_groups(in_features, group), dtype=torch.float16)
    mins = None if symmetric else torch.zeros_like(scales)
    for start in range(0, in_features, block):
        end = min(start + block, in_features)
        errors = torch.zeros(out_features, end - start, dtype=torch.float64)
        for i in range(start, end):
            if i % group == 0:  # a new group: its grid from its columns as updated so far
                g_scales, g_mins = group_grid(w[:, i : i + group].float(), method, symmetric)
                scales[:, i // group] = g_scales
                if mins is not None:
                    mins[:, i // group] = g_mins
            g = i // group
            q_i, stored = round_to_grid(w[:, i].float(), scales[:, g], None if mins is None else mins[:, g], method)
            q[:, i] = q_i.to(torch.int16)
            err = (w[:, i] - stored.double()) / u[i, i]
            w[:, i + 1 : end] -= err[:, None] * u[i, i + 1 : end][None, :]  # within the block, now
            errors[:, i - start] = err
        w[:, end:] -= errors @ u[start:end, end:]  # after the block, once (lazy batch update)
    return _stored(q, scales, mins, method, symmetric)


def _stored(
    q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, method: str, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Integers (out, in) -> the buffers ``QuantizedMatrix.load_stored_`` takes."""
    if method == "int4":
        return tensors.pack_int4(q + tensors.INT4_ZERO if symmetric else q), scales, mins
    return q.to(torch.int8 if symmetric else torch.uint8), scales, mins


def output_error(weight: torch.Tensor, stored: torch.Tensor, hessian: torch.Tensor) -> float:
    """The layer's mean squared output error on the calibration inputs, from their Hessian alone:
    ||X (W - Q)^T||^2 / n = trace(D H D^T) / 2 with D = W - Q (H = 2 X^T X / n)."""
    d = weight.double() - stored.double()
    return float(torch.einsum("oi,ij,oj->", d, hessian.double(), d) / 2)
