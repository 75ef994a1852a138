"""GPTQ's math (llmkit.quantize.gptq) on tiny matrices: round-to-nearest where the Hessian is diagonal,
a direct reference of the column-by-column OBS update (explicit inverses, no Cholesky, no blocks), the
output error against round-to-nearest and against the best integers found by brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from llmkit.quantize import gptq
from llmkit.quantize import tensors as qt

# (method, group size or None for int8's per-channel grid, symmetric)
FORMATS = [("int4", 32, False), ("int4", 32, True), ("int4", 64, False), ("int8", None, True), ("int8", 32, False)]


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """n input rows of width d whose channels are correlated and of unequal size, as activations are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    return (torch.randn(n, d, generator=g) @ mix) * torch.linspace(0.2, 3.0, d)


def rtn(w: torch.Tensor, method: str, group: int | None, symmetric: bool):
    if method == "int4":
        return qt.quantize_int4(w, group, symmetric)
    return qt.quantize_int8(w, group, symmetric)


def read(stored, method: str, group: int | None, in_features: int) -> torch.Tensor:
    q, scales, mins = stored
    if method == "int4":
        return qt.dequantize_int4(q, scales, mins, in_features, group)
    return qt.dequantize_int8(q, scales, mins, group)


def reference_gptq(w: torch.Tensor, h: torch.Tensor, method: str, group: int | None, symmetric: bool) -> torch.Tensor:
    """The values GPTQ stores, by the paper's equations taken literally: quantize column i on its group's
    grid (chosen from the group's updated weights at its first column), then move every later column by
    -(w_i - q_i) / [H_F^-1]_ii * [H_F^-1]_i,j with H_F^-1 the explicit inverse over the columns F = i.."""
    out_features, n = w.shape
    group = group or n
    h = h.double().clone()
    h += gptq.DAMP * torch.diagonal(h).mean() * torch.eye(n, dtype=torch.float64)
    w = w.double().clone()
    stored = torch.zeros_like(w)
    for i in range(n):
        if i % group == 0:
            scales, mins = gptq.group_grid(w[:, i : i + group].float(), method, symmetric)
        _, stored[:, i] = gptq.round_to_grid(w[:, i].float(), scales, mins, method)
        inverse = torch.linalg.inv(h[i:, i:])  # H_F^-1 for F = i..n-1
        err = (w[:, i] - stored[:, i]) / inverse[0, 0]
        w[:, i + 1 :] -= err[:, None] * inverse[0, 1:][None, :]
    return stored.float()


@pytest.mark.parametrize("method,group,symmetric", FORMATS)
def test_diagonal_hessian_is_round_to_nearest(method, group, symmetric):
    # no column's error reaches another: GPTQ stores exactly what tensors.quantize_* stores
    w = torch.randn(12, 80, generator=torch.Generator().manual_seed(1)) * 0.05
    w[0, 5] = 0.4  # an outlier widens its group's grid
    for h in (torch.eye(80), torch.diag(torch.rand(80, generator=torch.Generator().manual_seed(2)) + 0.1)):
        got = gptq.gptq_quantize(w, h, method, group, symmetric)
        want = rtn(w, method, group, symmetric)
        for a, b in zip(got, want, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("method,group,symmetric", FORMATS)
@pytest.mark.parametrize("block", [32, 128])
def test_matches_the_direct_reference(method, group, symmetric, block):
    # the Cholesky rows and the lazy block updates are the same numbers as the explicit OBS updates
    x = correlated_inputs(512, 96, seed=3)
    w = torch.randn(10, 96, generator=torch.Generator().manual_seed(4)) * 0.1
    h = 2 * x.double().T @ x.double() / x.shape[0]
    stored = read(gptq.gptq_quantize(w, h, method, group, symmetric, block=block), method, group, 96)
    torch.testing.assert_close(stored, reference_gptq(w, h, method, group, symmetric), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,group,symmetric", FORMATS)
def test_output_error_below_round_to_nearest(method, group, symmetric):
    # on the calibration inputs the layer's output is closer to the float one than round-to-nearest's
    for seed in range(3):
        x = correlated_inputs(400, 128, seed=seed)
        w = torch.randn(24, 128, generator=torch.Generator().manual_seed(10 + seed)) * 0.05
        h = gptq.Hessian(128)
        for part in x.split(100):  # accumulated batch by batch
            h.add(part)
        ours = read(gptq.gptq_quantize(w, h.value(), method, group, symmetric), method, group, 128)
        nearest = read(rtn(w, method, group, symmetric), method, group, 128)
        error = ((x @ (w - ours).T) ** 2).sum() / x.shape[0]
        error_rtn = ((x @ (w - nearest).T) ** 2).sum() / x.shape[0]
        assert error < 0.8 * error_rtn, (seed, float(error), float(error_rtn))
        # output_error computes the same quantity from the Hessian alone
        assert gptq.output_error(w, ours, h.value()) == pytest.approx(float(error), rel=1e-6)


def test_between_the_best_integers_and_round_to_nearest():
    # rows of 5 weights, one int4 group: GPTQ keeps RTN's grid (chosen from the weights before any update)
    # and picks integers on it; brute force over all 16^5 integer vectors on that grid is the floor
    combos = torch.tensor(list(itertools.product(range(16), repeat=5)), dtype=torch.float64)  # (16^5, 5)
    ours_total = nearest_total = 0.0
    for seed in range(8):
        x = correlated_inputs(200, 5, seed=seed)
        h = 2 * x.double().T @ x.double() / 200
        w = torch.randn(1, 5, generator=torch.Generator().manual_seed(100 + seed)) * 0.2
        q, scales, mins = gptq.gptq_quantize(w, h, "int4", 32, False)
        _, rtn_scales, rtn_mins = rtn(w, "int4", 32, False)
        assert torch.equal(scales, rtn_scales) and torch.equal(mins, rtn_mins)
        d = w.double() - (float(scales[0, 0]) * combos + float(mins[0, 0]))
        best = float((torch.einsum("ni,ij,nj->n", d, h, d) / 2).min())
        ours = gptq.output_error(w, read((q, scales, mins), "int4", 32, 5), h)
        nearest = gptq.output_error(w, read(rtn(w, "int4", 32, False), "int4", 32, 5), h)
        assert best <= ours + 1e-12 and ours <= nearest + 1e-12, seed
        ours_total, nearest_total = ours_total + ours, nearest_total + nearest
    assert ours_total < nearest_total  # with 5 weights GPTQ often rounds as RTN does, not always


def test_dead_columns_and_hessian_accumulation():
    # a channel that is always 0 reaches no output: its weights are stored as 0 and H still inverts
    x = correlated_inputs(300, 64, seed=5)
    x[:, 10] = 0
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(6))
    h = gptq.Hessian(64)
    h.add(x[:150].reshape(3, 50, 64))  # any leading dimensions
    h.add(x[150:])
    exact = 2 * x.double().T @ x.double() / 300
    torch.testing.assert_close(h.value(), exact, rtol=0, atol=1e-6 * float(exact.abs().max()))  # fp32 products
    stored = read(gptq.gptq_quantize(w, h.value(), "int4", 32, True), "int4", 32, 64)
    assert torch.all(stored[:, 10] == 0)
    assert torch.isfinite(stored).all()
