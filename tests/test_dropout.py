"""CPU training dropout (llmkit.models.dropout): the compiled one-pass kernel (llmkit.cpu_kernels)
and its torch-op fallback keep the distribution and follow the seed; the kernel's output is its
SplitMix64 draws applied exactly as torch's multiply would, for any thread count, and backward
regenerates the same mask."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from llmkit import cpu_kernels
from llmkit.models.dropout import Dropout, kernel_draws, kernel_takes


@pytest.fixture(params=["kernel", "torch ops"])
def path(request, monkeypatch):
    """Each test once through the compiled kernel and once through the fallback."""
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "1" if request.param == "kernel" else "0")
    cpu_kernels.library.cache_clear()
    yield request.param
    monkeypatch.undo()
    cpu_kernels.library.cache_clear()


def test_the_kernels_build_here():
    """Where a C compiler exists the kernels must build (under CI the skip fails the run)."""
    if os.environ.get(cpu_kernels.ENV_SWITCH) == "0":
        pytest.skip(f"{cpu_kernels.ENV_SWITCH}=0 in the environment")
    if cpu_kernels.shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler on PATH: Dropout uses its torch-op path")
    assert cpu_kernels.available(), cpu_kernels.reason()
    assert cpu_kernels.reason() is None
    assert kernel_takes(torch.zeros(2)) and kernel_takes(torch.zeros(2, dtype=torch.bfloat16))
    assert not kernel_takes(torch.zeros(2, dtype=torch.float16))  # other dtypes: torch ops


def test_dropout_keeps_the_distribution_and_follows_the_seed(path):
    """The drop rate is p at every one of the four positions a 64-bit word is split into, kept
    values are scaled by 1 / (1 - p) (in the input's dtype, as torch rounds it), the seed fixes the
    mask, eval mode and p = 0 pass x through, the gradient is the scaled mask."""
    assert kernel_takes(torch.zeros(1)) == (path == "kernel")
    x = torch.randn(200, 500)
    drop = Dropout(0.1).train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x))
    kept = a != 0
    rate = 1 - kept.float().mean().item()
    assert abs(rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 / x.numel())  # 4 standard errors
    for lane in range(4):  # each 16-bit quarter of the 64-bit draws is uniform on its own
        lane_rate = 1 - kept.flatten()[lane::4].float().mean().item()
        assert abs(lane_rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 * 4 / x.numel())
    torch.testing.assert_close(a[kept], x[kept] / 0.9)
    odd = torch.randn(7, 3, dtype=torch.bfloat16)  # a size that is not a multiple of 4, in bf16
    dropped = Dropout(0.3).train()(odd)
    scale = torch.tensor(1 / 0.7, dtype=torch.bfloat16)
    assert dropped.dtype == torch.bfloat16
    assert torch.equal(dropped[dropped != 0], odd[dropped != 0] * scale)
    assert not torch.equal(drop(x), a)  # a new mask each call
    assert torch.equal(drop.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    x = (torch.rand(200, 500) + 0.5).requires_grad_(True)  # randn gives an exact 0 about once in 10^7
    torch.manual_seed(4)
    out = Dropout(0.5).train()(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, (out != 0).float() * 2.0)


def test_second_derivatives_go_through_the_mask(path):
    """y = dropout(x), s = sum(y^2): ds/dx = 2 M^2 x and d(sum ds/dx)/dx = 2 M^2, M the scaled mask
    (y / x). The kernel's backward once ran outside autograd, so this came out 0.5x, silently."""
    torch.manual_seed(0)
    x = (torch.rand(64, 48, dtype=torch.float64) + 0.5).float().requires_grad_(True)
    drop = Dropout(0.3).train()
    y = drop(x)
    mask = (y / x).detach()
    (first,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    torch.testing.assert_close(first, 2 * mask * mask * x)
    (second,) = torch.autograd.grad(first.sum(), x)
    torch.testing.assert_close(second, 2 * mask * mask)
    assert (mask == 0).any() and (mask > 1).any()


def test_checkpointed_recomputation_redraws_the_same_mask(path):
    """Activation checkpointing restores torch's generator before recomputing: the same seed, the
    same mask, so gradients equal those of the run that kept its activations."""
    torch.manual_seed(0)
    layer, drop = torch.nn.Linear(64, 64), Dropout(0.3).train()
    x = torch.randn(16, 64)

    def block(h):
        return drop(layer(h)).tanh()

    grads = []
    for checkpointed in (False, True):
        layer.zero_grad()
        torch.manual_seed(1)
        out = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
        out.square().sum().backward()
        grads.append((out.detach(), layer.weight.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])


def _splitmix64_words(n_words: int, seed: int) -> np.ndarray:
    """SplitMix64 (Steele, Lea and Flood 2014): word k = mix(seed + (k + 1) * gamma), in numpy."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, n_words + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@pytest.fixture
def kernel():
    if not cpu_kernels.available():
        pytest.skip(f"the CPU kernels are not built here: {cpu_kernels.reason()}")


def test_kernel_draws_are_splitmix64(kernel):
    seed, n = 0xDEADBEEF12345678, 10_001  # more than two of the kernel's 4,096-element blocks, odd
    expected = _splitmix64_words((n + 3) // 4, seed).view(np.uint16)[:n].astype(np.int32)
    assert torch.equal(kernel_draws(n, seed), torch.from_numpy(expected))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_output_is_the_draws_mask_times_x_exactly(kernel, dtype):
    """Forward: x * where(draw >= round(p * 2^16), scale, 0) as torch computes it, bit for bit,
    including -0 for dropped negatives and NaN for a dropped inf (fp32), with 1 or 2 threads; backward:
    the gradient times the same mask."""
    from llmkit.models import dropout as d

    p, n = 0.1, 9_000
    seed = 0x0123456789ABCDEF
    keep = kernel_draws(n, seed) >= round(p * d.LEVELS)
    x = torch.randn(n, dtype=dtype) * 3
    dropped, kept = (~keep).nonzero()[:3, 0], keep.nonzero()[:3, 0]
    x[dropped] = torch.tensor([float("inf"), -0.0, -1e-30], dtype=dtype)  # dropped: NaN, -0, -0
    x[kept] = torch.tensor([float("-inf"), -0.0, 3.3e38], dtype=dtype)  # kept: -inf, -0, overflow to inf
    scale, zero = torch.tensor(1 / (1 - p), dtype=dtype), torch.zeros((), dtype=dtype)
    expected = x * torch.where(keep, scale, zero)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            out = d._KernelDropout.apply(x, p, seed)
            nan, bits = expected.isnan(), torch.int16 if dtype == torch.bfloat16 else torch.int32
            assert torch.equal(out.isnan(), nan)
            assert torch.equal(out[~nan].view(bits), expected[~nan].view(bits))  # -0 and +0 apart
            assert out[dropped[0]].isnan() and out[dropped[1:]].signbit().all() and out[kept[2]].isinf()
    finally:
        torch.set_num_threads(threads)
    leaf = x.clone().requires_grad_(True)
    out = d._KernelDropout.apply(leaf, p, seed)
    g = torch.randn(n, dtype=dtype)
    out.backward(g)
    assert torch.equal(leaf.grad, g * torch.where(keep, scale, zero))


def test_kernel_takes_non_contiguous_input(kernel):
    from llmkit.models import dropout as d

    x = torch.randn(64, 48).t()  # a transposed view
    out = d._KernelDropout.apply(x, 0.25, 7)
    assert torch.equal(out, d._KernelDropout.apply(x.contiguous(), 0.25, 7))


def test_without_a_working_compiler_dropout_keeps_the_torch_path(monkeypatch, tmp_path):
    """No compiler, or one that fails: no kernels, a reason naming it, and Dropout still drops."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(cpu_kernels.ENV_SWITCH, raising=False)
    try:
        for compiler, reason in (
            (str(tmp_path / "no-such-cc"), "no C compiler"),
            ("false", "building the C kernels failed"),
        ):
            monkeypatch.setenv("CC", compiler)
            cpu_kernels.library.cache_clear()
            assert not cpu_kernels.available() and cpu_kernels.reason().startswith(reason)
            assert not kernel_takes(torch.zeros(4))
            out = Dropout(0.5).train()(torch.ones(1000))
            assert 0 < (out == 0).sum() < 1000
        assert not list((tmp_path / "llmkit" / "kernels").glob("*"))  # nothing half-written left behind
    finally:
        monkeypatch.undo()
        cpu_kernels.library.cache_clear()


def test_the_library_is_built_once_into_the_cache(monkeypatch, tmp_path):
    if cpu_kernels.shutil.which(os.environ.get("CC") or "cc") is None or os.environ.get(cpu_kernels.ENV_SWITCH) == "0":
        pytest.skip("no C compiler on PATH, or the kernels switched off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        cpu_kernels.library.cache_clear()
        assert cpu_kernels.available(), cpu_kernels.reason()
        (built,) = (tmp_path / "llmkit" / "kernels").glob("cpu_kernels-*.so")
        stamp = built.stat().st_mtime_ns
        cpu_kernels.library.cache_clear()
        assert cpu_kernels.available() and built.stat().st_mtime_ns == stamp
        assert [p.name for p in built.parent.iterdir()] == [built.name]  # no temporary files left
    finally:
        monkeypatch.undo()
        cpu_kernels.library.cache_clear()


def test_a_library_planted_by_another_user_is_never_loaded(monkeypatch, tmp_path):
    """The cache falls back to a folder in the shared temporary directory: one that another user made
    or can write, or a library there that is not ours alone, is refused (with the reason), never
    loaded; our own folder is made 0700."""
    if os.getuid() != 0:
        pytest.skip("making files owned by another user needs root (CI and this project's machines run as root)")
    if cpu_kernels.shutil.which(os.environ.get("CC") or "cc") is None or os.environ.get(cpu_kernels.ENV_SWITCH) == "0":
        pytest.skip("no C compiler on PATH, or the kernels switched off")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".cache").write_text("not a folder: the user cache cannot be made")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.setattr(cpu_kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    shared = tmp_path / "tmp" / f"llmkit-kernels-{os.getuid()}"
    try:
        for plant in ("other owner", "world-writable folder", "world-writable library", "library of another user"):
            cpu_kernels.library.cache_clear()
            if shared.exists():
                cpu_kernels.shutil.rmtree(shared)
            shared.mkdir(parents=True, mode=0o700)
            if plant == "other owner":
                os.chown(shared, 65534, 65534)
            elif plant == "world-writable folder":
                os.chmod(shared, 0o777)
            else:  # a library under the very name llmkit would build, put there before it runs
                assert cpu_kernels.available(), cpu_kernels.reason()
                (library,) = shared.glob("cpu_kernels-*.so")
                if plant == "world-writable library":
                    os.chmod(library, 0o777)
                else:
                    os.chown(library, 65534, 65534)
                cpu_kernels.library.cache_clear()
            assert not cpu_kernels.available(), plant
            assert "no safe writable folder" in cpu_kernels.reason() and str(shared) in cpu_kernels.reason(), plant
        cpu_kernels.shutil.rmtree(shared)
        cpu_kernels.library.cache_clear()
        assert cpu_kernels.available(), cpu_kernels.reason()
        assert oct(shared.stat().st_mode & 0o777) == "0o700"
        (library,) = shared.glob("cpu_kernels-*.so")
        assert library.stat().st_mode & 0o077 == 0
    finally:
        monkeypatch.undo()
        cpu_kernels.library.cache_clear()
