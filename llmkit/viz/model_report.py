"""What `llmkit inspect` reports about a preset or a checkpoint directory, as JSON or as a table.

The counts come from ``llmkit.summary`` (the model built on the meta device, so nothing is allocated);
a checkpoint directory adds what its files hold: quantization, dtypes and bytes of the stored tensors,
file size, tokenizer vocabulary, and its model card (README.md), printed after the figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit import model_card
from llmkit.config import PRESETS, ModelConfig
from llmkit.errors import LlmkitError
from llmkit.summary import ModelSummary, human_bytes, human_count, summarize


@dataclass
class ModelReport:
    """A model's summary, and for a checkpoint directory what its files store (``stored``, in display order)."""

    model: str  # the name or path it was asked for
    config: ModelConfig
    summary: ModelSummary
    stored: dict[str, Any] = field(default_factory=dict)
    card: str | None = None  # a checkpoint's README.md model card

    def file_ratio(self) -> float | None:
        """model.safetensors' size over the fp32 weights' bytes (None for a preset)."""
        if "file size" not in self.stored:
            return None
        return round(self.stored["file size"] / self.summary.weight_bytes()["fp32"], 4)

    def to_dict(self) -> dict[str, Any]:
        report = {
            "model": self.model,
            "architecture": self.summary.architecture(),
            "context_window": self.config.max_seq_len,
            "vocab_size": self.config.vocab_size,
            "parameters": self.summary.total,
            "parameters_by_component": self.summary.parameters,
            "head": self.summary.head_note(),
            "weights_bytes": self.summary.weight_bytes(),
            **self.stored,
        }
        if "file size" in self.stored:
            report["file size vs fp32 weights"] = self.file_ratio()
        if self.card is not None:
            report["model_card"] = self.card
        return report

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """Totals, architecture, context and vocabulary, stored facts, parameters by component (largest
        first, with their share), and the weights' memory per precision."""
        s = self.summary
        lines = [
            f"{self.model}: {human_count(s.total)} parameters ({s.total:,})",
            f"  {s.architecture()}",
            f"  context window {self.config.max_seq_len} tokens | vocabulary {self.config.vocab_size}",
        ]
        for key, value in self.stored.items():
            if key == "file size":
                value = f"{human_bytes(value)} ({self.file_ratio():.3f}x the fp32 weights)"
            elif key == "stored bytes by dtype":
                value = " | ".join(f"{dtype} {human_bytes(n)}" for dtype, n in value.items())
            elif isinstance(value, list):
                value = ", ".join(map(str, value))
            lines.append(f"  {key}: {value}")
        lines.append(f"  {'component':<24}{'parameters':>16}{'share':>9}")
        for name, count in sorted(s.parameters.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<24}{count:>16,}{count / s.total:>9.1%}")
        head = s.head_note()
        if head:
            lines.append(f"  {head}")
        lines.append("  weights memory: " + " | ".join(f"{d} {human_bytes(b)}" for d, b in s.weight_bytes().items()))
        if self.card is not None:
            lines += ["", f"model card ({model_card.CARD}):", "", model_card.body(self.card).rstrip()]
        elif self.stored:
            lines += ["", f"model card: none ({model_card.CARD} is missing from the checkpoint)"]
        return "\n".join(lines)


def model_report(model: str) -> ModelReport:
    """The report for ``model``: an llmkit checkpoint directory, else a preset name.

    Order: a directory is read as a checkpoint (config, quantization, stored tensors, tokenizer) -> else
    the name must be a preset -> the model is built on the meta device and counted.
    """
    from llmkit.models import build_model

    path = Path(model)
    stored: dict[str, Any] = {}
    card = None
    if path.is_dir():
        from llmkit import checkpoint
        from llmkit.inference.loading import model_aliases

        cfg = checkpoint.load_config(path)
        names = model_aliases(path)
        stored["name"] = names[0]  # the name it is served, chatted with, evaluated and plotted under
        if len(names) > 1:
            stored["served also as"] = names[1:]  # llmkit serve's aliases
        quantization = checkpoint.load_quantization(path)
        stored["quantization"] = quantization.describe() if quantization is not None else "none"
        stored.update(stored_weights(path / checkpoint.WEIGHTS))
        tok = checkpoint.load_tokenizer(path, cfg)
        stored["tokenizer vocab"] = tok.vocab_size if tok is not None else None
        card = model_card.read(path)
        license_ = model_card.front_matter_value(card, "license") if card else None
        stored["license"] = license_ or "not stated (no license in the model card): check the model's origin"
    elif model in PRESETS:
        cfg = ModelConfig.from_name(model)
    else:
        raise LlmkitError(f"'{model}' is neither a checkpoint directory nor a preset", f"presets: {', '.join(PRESETS)}")
    return ModelReport(model, cfg, summarize(build_model(cfg, "meta")), stored, card)


def stored_weights(path: Path) -> dict[str, Any]:
    """The dtypes in the safetensors file, the bytes each takes (quantized weights apart from their
    float scales and norms), and the file's size."""
    from llmkit.checkpoint import read_weights

    by_dtype: dict[str, int] = {}
    for tensor in read_weights(path).values():
        dtype = str(tensor.dtype).replace("torch.", "")
        by_dtype[dtype] = by_dtype.get(dtype, 0) + tensor.numel() * tensor.element_size()
    by_dtype = dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]))
    return {
        "stored dtype": ",".join(sorted(by_dtype)),
        "stored bytes by dtype": by_dtype,
        "file size": path.stat().st_size,
    }
