"""Which linear layers a LoRA config's target names select: llmkit names first, then HF (peft) names."""

from __future__ import annotations

import re

from torch import nn

from llmkit.errors import LlmkitError
from llmkit.quantize.layers import QuantizedLinear

ADAPTER_PARTS = ("lora_A", "lora_B", "base_layer")  # inside a LoraLinear: never targets themselves
LAYER_INDEX = re.compile(r"^(.*\.)?layers\.\d+\.")  # stack.layers.3. / decoder.layers.0.


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Full name -> module of every float or quantized linear layer a LoRA adapter can wrap."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, QuantizedLinear)) and not any(p in name.split(".") for p in ADAPTER_PARTS)
    }


def matches(name: str, target: str) -> bool:
    """peft's rule: the whole name, or its dotted suffix."""
    return name == target or name.endswith("." + target)


def hf_names(model: nn.Module) -> dict[str, str]:
    """llmkit path -> transformers path, or {} for a model no Hugging Face architecture matches."""
    from llmkit.hf.modules import linear_module_map

    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    try:
        return linear_module_map(cfg)
    except LlmkitError:
        return {}


def short_names(names: list[str]) -> list[str]:
    """Names without their layer prefix (``stack.layers.3.attn.q`` -> ``attn.q``), each once, in order."""
    return list(dict.fromkeys(LAYER_INDEX.sub("", n) for n in names))


def resolve_targets(model: nn.Module, targets: list[str], rank: int) -> list[str]:
    """Full llmkit names of the linear layers ``targets`` select, in model order.

    A target is looked up among llmkit's names, then among the HF module paths of the same layers
    (``q_proj``, ``query``, ``self_attn.q_proj`` ...). Errors (one line each): a target that selects
    nothing, naming what exists; a rank above min(in, out) of a selected layer.
    """
    layers = linear_layers(model)
    hf = None
    chosen: set[str] = set()
    for target in targets:
        found = [n for n in layers if matches(n, target)]
        if not found:
            hf = hf_names(model) if hf is None else hf
            found = [ours for ours, theirs in hf.items() if matches(theirs, target) and ours in layers]
        if not found:
            family = getattr(getattr(model, "config", None), "family", "this")
            known = short_names(list(layers)) + sorted({theirs.rsplit(".", 1)[-1] for theirs in (hf or {}).values()})
            raise LlmkitError(
                f"LoRA target module '{target}' matches no linear layer of the {family} model",
                f"choose from: {', '.join(dict.fromkeys(known))}",
            )
        chosen.update(found)
    names = [n for n in layers if n in chosen]
    for name in names:
        m = layers[name]
        limit = min(m.in_features, m.out_features)
        if rank > limit:
            raise LlmkitError(
                f"LoRA rank {rank} is larger than layer '{name}' allows (in={m.in_features}, out={m.out_features})",
                f"set the rank to {limit} or less, or leave that layer out of target_modules",
            )
    return names
