"""quantize_checkpoint: an llmkit checkpoint directory in, a quantized one out (atomically).

A checkpoint workflow beside ``llmkit.checkpoint`` rather than inside ``llmkit.quantize``: checkpoint
loading imports quantize (to rebuild quantized modules), so quantize must not import checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmkit import checkpoint, model_card
from llmkit.errors import LlmkitError
from llmkit.model_card import ModelCard
from llmkit.quantize.calibrate import CalibrationStats, calibrate_model
from llmkit.quantize.calibration import CalibrationSet
from llmkit.quantize.layers import QuantizedMatrix, quantize_model
from llmkit.quantize.spec import QuantSpec


@dataclass
class QuantizeReport:
    """What ``quantize_checkpoint`` did: sizes of model.safetensors before and after, and the weight error."""

    source: Path
    out: Path
    spec: QuantSpec
    source_bytes: int
    out_bytes: int
    tensors: int  # matrices quantized, or tensors cast
    weights: int  # numbers in them
    max_error: float  # largest ||W - stored W|| / ||W|| over those tensors
    max_error_at: str
    calibration: CalibrationStats | None = None  # GPTQ's figures when calibrated

    @property
    def ratio(self) -> float:
        return self.out_bytes / self.source_bytes

    def summary(self) -> str:
        return (
            f"{self.spec.method}: {self.tensors} tensors ({self.weights:,} weights) -> {self.out}; "
            f"model.safetensors {self.source_bytes / 1e6:.2f} MB -> {self.out_bytes / 1e6:.2f} MB "
            f"({self.ratio:.3f}x); weight error ||W - q(W)|| / ||W|| at most {self.max_error:.2%} "
            f"({self.max_error_at})" + (f"\n{self.calibration.summary()}" if self.calibration else "")
        )


def quantize_checkpoint(
    source: str | os.PathLike,
    out: str | os.PathLike,
    spec: QuantSpec,
    calibration: CalibrationSet | None = None,
    progress: bool = True,
    verify: bool = True,
) -> QuantizeReport:
    """Quantize the checkpoint at ``source`` into the new directory ``out``.

    Order: refuse an existing ``out`` -> read and validate ``source`` (refusing one already quantized)
    -> ``quantize_model`` (round to nearest), or with ``calibration`` windows GPTQ's ``calibrate_model``
    -> measure each quantized tensor's relative error against the original -> save (config.json gains
    the ``quantization`` entry; tokenizer and generation config are kept).
    """
    source, out = Path(source), Path(out)
    check_paths(source, out)
    model = checkpoint.load(source, verify=verify)
    original = dict(model.state_dict())  # the float tensors; quantize_model replaces, never overwrites them
    stats = None
    if calibration is not None and calibration.windows is not None:
        stats = calibrate_model(model, spec, calibration.windows, progress)
    else:
        quantize_model(model, spec)
    errors = cast_errors(model, original) if spec.is_cast else quantized_errors(model, original)
    model.quantization = spec
    worst = max(errors, key=errors.get) if errors else ""
    how = f"GPTQ on {calibration.describe()}" if stats else None
    checkpoint.save(model, out, card=quantized_card(source, spec, errors.get(worst, 0.0), worst, how))
    return QuantizeReport(
        source=source, out=out, spec=spec,
        source_bytes=(source / checkpoint.WEIGHTS).stat().st_size, out_bytes=(out / checkpoint.WEIGHTS).stat().st_size,
        tensors=len(errors), weights=sum(original[name].numel() for name in errors),
        max_error=errors.get(worst, 0.0), max_error_at=worst, calibration=stats,
    )  # fmt: skip


def check_paths(source: Path, out: Path) -> None:
    """Refuse an existing ``out`` and a ``source`` already quantized (before any slow work)."""
    if out.exists():
        raise LlmkitError(f"{out} already exists", "choose a new OUT directory (quantize never overwrites)")
    before = checkpoint.load_quantization(source)
    if before is not None:
        raise LlmkitError(
            f"{source} is already quantized ({before.describe()})", "quantize the original, unquantized checkpoint"
        )


def quantized_card(
    source: Path, spec: QuantSpec, max_error: float, max_error_at: str, calibrated: str | None = None
) -> ModelCard:
    """The card of a quantized copy: how it was made (``calibrated``: GPTQ's calibration data) and its
    weight error, the source's card kept below."""
    base = model_card.read(source)
    how = f" Integers chosen by {calibrated}." if calibrated else ""
    return ModelCard(
        how_made=f"Quantized by `llmkit quantize` from `{source}`: {spec.describe()}.{how}",
        name=f"{source.name} ({spec.method})",
        base_model=str(source),
        license=model_card.front_matter_value(base, "license") if base else None,
        metrics={"largest relative weight error": f"{max_error:.3%} ({max_error_at})" if max_error_at else "0"},
        limitations=[
            f"{spec.method} weights differ from the source's (above): measure quality on your task "
            "(e.g. `llmkit eval --perplexity`, bench/quantize_perplexity.py) before you rely on it.",
            "The base checkpoint's data, licenses and limits (below) still apply.",
        ],
        base_card=base,
    )


def relative_error(stored: torch.Tensor, original: torch.Tensor) -> float:
    """||stored - original|| / ||original|| in fp64 (0 for an all-zero original stored exactly)."""
    diff = (stored.double() - original.double()).norm().item()
    norm = original.double().norm().item()
    return diff / norm if norm else diff


def quantized_errors(model: nn.Module, original: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative error of every quantized matrix, keyed by the float weight's name."""
    return {
        f"{name}.weight": relative_error(m.dequantize(), original[f"{name}.weight"])
        for name, m in model.named_modules()
        if isinstance(m, QuantizedMatrix)
    }


def cast_errors(model: nn.Module, original: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative error of every cast floating tensor (tied aliases once)."""
    cast = checkpoint.unique_state_dict(model)
    return {name: relative_error(t, original[name]) for name, t in cast.items() if t.is_floating_point()}
