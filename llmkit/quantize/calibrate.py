"""Calibrated int8/int4 quantization of a whole model: GPTQ (llmkit.quantize.gptq) block by block.

The order of GPTQ's reference code ("sequential" quantization): the calibration token windows run to
the first block once; then for each transformer block in turn, forward hooks on its linear layers
accumulate each one's input Hessian while the block runs on its inputs (the outputs of the blocks
already quantized, so a block corrects for the error of those before it), each linear is replaced by
a QuantizedLinear holding GPTQ's integers, and the quantized block runs again to give the next
block's inputs. The linear layers outside the blocks (the LM head, a classifier, a pooler) get their
Hessians from one pass of the model with every block quantized. A head tied to the token embedding
table quantizes the table with the head's Hessian (one matrix serves both; the lookups read the same
rows); the other tables (position, token type) stay in float, as ``quantize_model`` keeps them.
Everything else is ``quantize_model``'s: the same modules, buffers and state dict, so a calibrated
checkpoint is read by ``llmkit.load`` like any other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from llmkit.errors import LlmkitError
from llmkit.models.stack import Stack
from llmkit.quantize import gptq, tensors
from llmkit.quantize.layers import QuantizedEmbedding, QuantizedLinear, quantize_model
from llmkit.quantize.spec import QuantSpec

BATCH_ROWS = 8  # calibration windows per forward pass: bounds the activations held at once


@dataclass
class CalibrationStats:
    """What ``calibrate_model`` did: per matrix, the mean squared output error on the calibration inputs
    of GPTQ's integers and of round-to-nearest's (``gptq.output_error``), and the time it took."""

    gptq_error: dict[str, float] = field(default_factory=dict)
    rtn_error: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0

    def error_ratio(self) -> float:
        """Summed output error of GPTQ over round-to-nearest's, over every calibrated matrix (below 1: better)."""
        rtn = sum(self.rtn_error.values())
        return sum(self.gptq_error.values()) / rtn if rtn else 1.0

    def summary(self) -> str:
        return (
            f"GPTQ on {self.tokens:,} calibration tokens: {len(self.gptq_error)} matrices in {self.seconds:.0f} s; "
            f"their output error on those tokens is {self.error_ratio():.1%} of round-to-nearest's"
        )


class _Stop(Exception):
    """Raised by the capture hook once the inputs of every stack's first block are known."""


@torch.no_grad()
def calibrate_model(
    model: nn.Module, spec: QuantSpec, windows: torch.Tensor, progress: bool = True
) -> CalibrationStats:
    """Quantize ``model`` in place to ``spec`` (int8/int4) with GPTQ on the token ids ``windows`` (N, T).

    Order: the first block's inputs captured -> each block: Hessians, GPTQ, its quantized outputs ->
    the linears outside the blocks (and a tied embedding table): Hessians from one pass, GPTQ ->
    ``quantize_model`` for the rest (embedding tables not tied to a head, ties). Matrices the spec keeps
    in float (``spec.for_module`` None) stay float.
    """
    if spec.is_cast:
        raise LlmkitError(f"{spec.method} is a cast: there is nothing to calibrate", "calibrate int8 or int4")
    if model.config.family == "encoder_decoder":
        raise LlmkitError(
            "calibrated quantization supports decoder-only and encoder models",
            "quantize this model without --calibrate",
        )
    start, stats = time.perf_counter(), CalibrationStats(tokens=windows.numel())
    model.eval()
    batches = list(windows.split(BATCH_ROWS))
    stacks = [m for m in model.modules() if isinstance(m, Stack) and len(m.layers)]
    inputs = _first_block_inputs(model, stacks, batches)
    blocks = [(stack, i) for stack in stacks for i in range(len(stack.layers))]
    names = {id(m): n for n, m in model.named_modules()}
    for stack, i in tqdm(blocks, desc="GPTQ", unit="block", disable=not progress):
        block, (xs, kwargs) = stack.layers[i], inputs[id(stack)]
        _quantize_linears(block, spec, names, stats, partial(_run_block, block, xs, kwargs))
        xs[:] = _run_block(block, xs, kwargs)  # the next block's inputs, from the quantized block
    _quantize_outside(model, spec, names, stats, batches)
    stats.seconds = time.perf_counter() - start
    return stats


def _run_block(block: nn.Module, xs: list[torch.Tensor], kwargs: list[dict[str, Any]]) -> list[torch.Tensor]:
    """The block's output states for each batch's input states and keyword arguments."""
    return [block(x, **kw)[0] for x, kw in zip(xs, kwargs, strict=True)]


def _first_block_inputs(
    model: nn.Module, stacks: list[Stack], batches: list[torch.Tensor]
) -> dict[int, tuple[list[torch.Tensor], list[dict[str, Any]]]]:
    """id(stack) -> (x, keyword arguments) of its first block for each batch, from forward pre-hooks.
    The keyword arguments (masks, rotary angles) are the same for every block of a stack in one pass."""
    captured = {id(stack): ([], []) for stack in stacks}
    last = stacks[-1]

    def hook(stack: Stack):
        def capture(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            captured[id(stack)][0].append(args[0])
            captured[id(stack)][1].append(kwargs)
            if stack is last:  # everything needed is known: skip the rest of the model
                raise _Stop

        return capture

    handles = [s.layers[0].register_forward_pre_hook(hook(s), with_kwargs=True) for s in stacks]
    try:
        _passes(model, batches)
    finally:
        for h in handles:
            h.remove()
    return captured


def _quantize_linears(parent: nn.Module, spec: QuantSpec, names: dict[int, str], stats: CalibrationStats, run) -> None:
    """Replace every ``nn.Linear`` under ``parent`` that the spec quantizes by GPTQ's QuantizedLinear,
    from the Hessians of its inputs while ``run()`` runs."""
    targets = [(p, attr, child) for p, attr, child in _children(parent) if spec.for_module(names[id(child)])]
    hessians = _hessians([child for _, _, child in targets], run)
    for p, attr, linear in targets:
        if id(linear) not in hessians:  # never called: quantize_model rounds it to nearest at the end
            continue
        _replace(p, attr, linear, spec.for_module(names[id(linear)]), hessians[id(linear)], names[id(linear)], stats)


def _quantize_outside(
    model: nn.Module, spec: QuantSpec, names: dict[int, str], stats: CalibrationStats, batches: list[torch.Tensor]
) -> None:
    """The linears outside the blocks (heads, poolers), from one pass with the blocks quantized; then
    ``quantize_model`` (embedding tables, ties), and a table tied to a head gets GPTQ's integers for the
    head's inputs."""
    in_blocks = {id(m) for s in model.modules() if isinstance(s, Stack) for m in s.layers.modules()}
    outside = [(p, attr, child) for p, attr, child in _children(model) if id(child) not in in_blocks]
    tables = {id(m.weight): names[id(m)] for m in model.modules() if isinstance(m, nn.Embedding)}
    hessians = _hessians([child for _, _, child in outside], partial(_passes, model, batches), stop=True)
    tied = []
    for p, attr, linear in outside:
        if id(linear) not in hessians:  # never called: quantize_model rounds it to nearest
            continue
        if id(linear.weight) in tables:  # quantize_model decides: a TiedQuantizedHead, or float with its table
            tied.append((linear, tables[id(linear.weight)]))
        elif chosen := spec.for_module(names[id(linear)]):
            _replace(p, attr, linear, chosen, hessians[id(linear)], names[id(linear)], stats)
    quantize_model(model, spec)  # the tables (rounded to nearest) and the ties; GPTQ's linears stay as they are
    modules = dict(model.named_modules())
    for linear, table_name in tied:
        table = modules[table_name]
        if isinstance(table, QuantizedEmbedding):
            chosen = spec.for_module(table_name, table=True)
            table.load_stored_(*_gptq(linear.weight, hessians[id(linear)], chosen, table_name, stats))


def _children(parent: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(module, attribute, linear) of every ``nn.Linear`` under ``parent``, collected before any is replaced."""
    return [(p, a, c) for p in parent.modules() for a, c in p.named_children() if isinstance(c, nn.Linear)]


def _replace(
    parent: nn.Module, attr: str, linear: nn.Linear, spec: QuantSpec, hessian: gptq.Hessian, name: str,
    stats: CalibrationStats,
) -> None:  # fmt: skip
    """``parent.attr`` = a QuantizedLinear holding GPTQ's integers for ``linear`` (its bias copied)."""
    q = QuantizedLinear.from_linear(linear, spec, empty=True)
    q.load_stored_(*_gptq(linear.weight, hessian, spec, name, stats))
    if linear.bias is not None:
        q.bias.data = linear.bias.detach().clone()
    setattr(parent, attr, q)


def _hessians(linears: list[nn.Linear], run, stop: bool = False) -> dict[int, gptq.Hessian]:  # noqa: ANN001
    """id(linear) -> the Hessian of its inputs while ``run()`` runs the model (or a block). Linears
    called one after another on the same tensor (q, k and v; up and gate) share one Hessian. ``stop``:
    end each pass (``_Stop``, which ``run`` catches) once every linear has had its input, so an LM
    head's Hessian costs no logits."""
    hessians: dict[int, gptq.Hessian] = {}
    last: list = [None, None]  # the input of the previous call and the Hessian it went into
    seen: set[int] = set()

    def record(module: nn.Module, args: tuple) -> None:
        x = args[0]
        if not (x is last[0] and hessians.setdefault(id(module), last[1]) is last[1]):  # not shared
            h = hessians.setdefault(id(module), gptq.Hessian(module.in_features))
            h.add(x)
            last[:] = [x, h]
        seen.add(id(module))
        if stop and len(seen) == len(linears):
            seen.clear()
            raise _Stop

    handles = [m.register_forward_pre_hook(record) for m in linears]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return hessians


def _passes(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """The model on each batch, each pass ended early where a hook raises ``_Stop``."""
    for batch in batches:
        try:
            model(batch.to(_device(model)))
        except _Stop:
            pass


def _gptq(
    weight: torch.Tensor, hessian: gptq.Hessian, spec: QuantSpec, name: str, stats: CalibrationStats
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ's stored buffers for one matrix; its output error and round-to-nearest's recorded in ``stats``."""
    h = hessian.value()
    q, scales, mins = gptq.gptq_quantize(weight, h, spec.method, spec.group_size, spec.symmetric)
    stored = _read(q, scales, mins, spec, weight.shape[1])
    rtn = _read(*_rtn(weight, spec), spec, weight.shape[1])
    stats.gptq_error[name] = gptq.output_error(weight, stored, h)
    stats.rtn_error[name] = gptq.output_error(weight, rtn, h)
    return q, scales, mins


def _rtn(weight: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if spec.method == "int4":
        return tensors.quantize_int4(weight, spec.group_size, spec.symmetric)
    return tensors.quantize_int8(weight, spec.group_size, spec.symmetric)


def _read(q, scales, mins, spec: QuantSpec, in_features: int) -> torch.Tensor:  # noqa: ANN001
    if spec.method == "int4":
        return tensors.dequantize_int4(q, scales, mins, in_features, spec.group_size)
    return tensors.dequantize_int8(q, scales, mins, spec.group_size)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
