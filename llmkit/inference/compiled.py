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

Guards: dynamo checks, before every call, that what the graph was traced from still holds; for a model
passed as an argument that is every parameter, buffer and module attribute it read (SmolLM2 int4: 8,692
guards, 2.5-3.0 ms a step of ~19). The runners instead store ``step_signature(model)`` on the model once
per ``generate`` (module types, their scalar attributes and hooks, every tensor's shape, strides, dtype,
device and ties: 16-25 ms for SmolLM2), the step compares it with a constant, and the model's own guards
are filtered out (``_guard_filter``): one string comparison stands for all of them. dynamo's own figure
for the guards of that step (TORCH_LOGS=guards, one thread, load ~3): 3.0 ms before, 0.33 ms after (the
cache's and the globals' are left). Models with equal signatures still share a graph; any difference in
one traces it again, as the guards would (tests/test_generate.py changes a flag the forward branches on).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
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


SIGNATURE = "llmkit_step_signature"  # the model attribute a compiled step is guarded on


_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


def _describe(value, tensors: dict[int, int], depth: int = 0) -> object:
    """What of a module attribute a traced graph can depend on, as plain data (for ``step_signature``)."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, torch.Tensor):  # ties: the same tensor twice gets the same index
        index = tensors.setdefault(id(value), len(tensors))
        return ("tensor", index, tuple(value.shape), value.stride(), value.dtype, value.device, value.requires_grad)
    if isinstance(value, dict):
        if not value:
            return ()
        if depth < 3:
            return tuple((repr(k), _describe(v, tensors, depth + 1)) for k, v in value.items())
    if depth < 3 and isinstance(value, (list, tuple)):
        return tuple(_describe(v, tensors, depth + 1) for v in value)
    if isinstance(value, nn.Module) or callable(value):  # a child module (described on its own) or a method
        return getattr(value, "__qualname__", kind.__qualname__)
    if isinstance(value, _PLAIN) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return repr(value)  # subclasses of the plain types (enums), configs
    return kind.__qualname__


def step_signature(model: nn.Module) -> str:
    """A digest of everything of ``model`` a compiled step's graph depends on: for every module its type and
    attributes (scalars, configs, hooks and replaced methods by name, parameters, buffers and plain tensor
    attributes by shape, strides, dtype, device, gradient flag and which are the same tensor)."""
    tensors: dict[int, int] = {}
    parts = [
        (name, type(module).__qualname__, _describe({k: v for k, v in vars(module).items() if k != SIGNATURE}, tensors))
        for name, module in model.named_modules(remove_duplicate=False)
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def sign(model: nn.Module) -> None:
    """Store the model's current ``step_signature`` for the compiled steps (before each generation)."""
    setattr(model, SIGNATURE, step_signature(model))


def _guard_filter(entries: list) -> list[bool]:
    """Keep every guard but those on the model's own attributes and tensors, which its signature stands for."""
    return [SIGNATURE in e.name or not (e.name.startswith("model") or e.name.startswith("type(model")) for e in entries]


def _guard_on_signature(model: nn.Module) -> None:
    """Compare the signature with a constant, so that dynamo guards on its value (reading it alone guards
    only its type)."""
    if getattr(model, SIGNATURE, None) == "":
        raise ValueError("empty step signature")


def decoder_step(model: nn.Module, tokens, attention_mask, position_ids, cache) -> torch.Tensor:
    """One token per row (R,) through a decoder-only model over its cache -> next-token logits (R, V)."""
    _guard_on_signature(model)
    out = model(tokens[:, None], attention_mask=attention_mask, position_ids=position_ids, cache=cache)
    return out.logits[:, -1].float()  # (R, V)


def encoder_decoder_step(model: nn.Module, tokens, memory, memory_mask, cache) -> torch.Tensor:
    """One token per row (R,) through an encoder-decoder's decoder over the encoder output (R, S, C)."""
    _guard_on_signature(model)
    logits, *_ = model.decode(tokens[:, None], memory, memory_mask, cache=cache)
    return logits[:, -1].float()  # (R, V)


@functools.cache
def compiled_step(family: str) -> Callable:
    """The compiled step of ``family`` ("decoder" or "encoder_decoder"): one function per family, the
    model passed as an argument, so models of one architecture share a graph (their weights are graph
    inputs) where a closure per model would compile again for each. Created on first use: importing
    llmkit does not import the compiler."""
    step = decoder_step if family == "decoder" else encoder_decoder_step
    return torch.compile(step, dynamic=True, backend=_backend, options={"guard_filter_fn": _guard_filter})
