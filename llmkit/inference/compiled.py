"""A torch.compile'd decoding step: the whole model, for one new token per row, as one graph.

Why: a decoding step of a small model is ~100 tiny operations whose Python and dispatch overhead
costs more than their arithmetic (the tiny 4-layer, 128-wide shape: 0.66 ms a step eager, 0.32
compiled, one thread). For one row the matmuls are matrix-vector products bound by memory
bandwidth, and inductor's own vectorised multiply-and-sum streams a row-major (out, in) weight
faster than the BLAS call does (GPT-2 small, 2 threads: 29 ms a token eager with the best BLAS
layout, 17.5 compiled), so one-row matmuls are rewritten that way before inductor lowers them
(``ONE_ROW_DECOMPOSITIONS``). Results equal the eager step's up to summation order (~1e-6).

Costs and limits: the first step of a shape compiles (seconds for a tiny model, about a minute for
GPT-2 small, on this 2-core CPU; cached on disk by inductor afterwards); the prompt (prefill) runs
eagerly. Steps are compiled with dynamic shapes, so the growing cache does not recompile; a new
batch size, padding or no padding, or another model does (torch keeps 8 variants per step
function, then falls back to eager with a warning).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

aten = torch.ops.aten


def _one_row(a: torch.Tensor) -> bool:
    # statically_known_true: never guard (or recompile) on a symbolic row count
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return a.device.type == "cpu" and statically_known_true(a.shape[0] == 1)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1, K) @ (K, N) as a multiply and a sum over K, which inductor fuses into one vectorised pass."""
    if _one_row(a):
        return (a.T * b).sum(dim=0, keepdim=True)
    return NotImplemented


def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta=1, alpha=1) -> torch.Tensor:
    if _one_row(a) and beta == 1 and alpha == 1:
        return (a.T * b).sum(dim=0, keepdim=True) + bias
    return NotImplemented


ONE_ROW_DECOMPOSITIONS = {aten.mm.default: _mm, aten.addmm.default: _addmm}


def _backend(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
    """Inductor with the one-row matmul rewrite added to its decompositions."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    return compile_fx(graph, example_inputs, decompositions={**select_decomp_table(), **ONE_ROW_DECOMPOSITIONS})


def decoder_step(model: nn.Module, tokens, attention_mask, position_ids, cache) -> torch.Tensor:
    """One token per row (R,) through a decoder-only model over its cache -> next-token logits (R, V)."""
    out = model(tokens[:, None], attention_mask=attention_mask, position_ids=position_ids, cache=cache)
    return out.logits[:, -1].float()  # (R, V)


def encoder_decoder_step(model: nn.Module, tokens, memory, memory_mask, cache) -> torch.Tensor:
    """One token per row (R,) through an encoder-decoder's decoder over the encoder output (R, S, C)."""
    logits, *_ = model.decode(tokens[:, None], memory, memory_mask, cache=cache)
    return logits[:, -1].float()  # (R, V)


@functools.cache
def compiled_step(family: str) -> Callable:
    """The compiled step of ``family`` ("decoder" or "encoder_decoder"): one function per family, the
    model passed as an argument, so models of one architecture share a graph (their weights are graph
    inputs) where a closure per model would compile again for each. Created on first use: importing
    llmkit does not import the compiler."""
    step = decoder_step if family == "decoder" else encoder_decoder_step
    return torch.compile(step, dynamic=True, backend=_backend)
