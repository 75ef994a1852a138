"""Checkpoint directories: config.json, model.safetensors, tokenizer.json, generation_config.json.

A quantized checkpoint (``llmkit quantize``) says so in the ``quantization`` entry of config.json;
its safetensors file holds ``NAME.qweight`` and ``NAME.scales`` in place of each quantized
``NAME.weight``, and ``load`` rebuilds the quantized modules before reading them (llmkit.quantize).

Saves are atomic (a temporary directory beside the target, renamed into place), so a crash never
leaves a half-written checkpoint. Loads validate every file and turn each problem into a one-line
``LlmkitError`` that names the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from llmkit import files
from llmkit.config import GenerationConfig, ModelConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.files import atomic_directory
from llmkit.model_card import CARD, ModelCard, architecture, render
from llmkit.models import build_model
from llmkit.plan.parameters import count_parameters
from llmkit.quantize.layers import quantize_model, use_kernels
from llmkit.quantize.spec import QuantSpec

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
GENERATION = "generation_config.json"
FORMAT = "llmkit"  # marks our config.json apart from a Hugging Face one
FORMAT_VERSION = 1
QUANTIZATION = "quantization"  # config.json entry of a quantized checkpoint (not a ModelConfig field)


# ---- saving ---------------------------------------------------------------------------------
def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without aliases of tied weights (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        key = tensor.untyped_storage().data_ptr() + tensor.storage_offset() if tensor.numel() else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous()
    return out


def save(
    model: nn.Module,
    directory: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    generation_config: GenerationConfig | None = None,
    extra_files: dict[str, Any] | None = None,
    card: ModelCard | None = None,
) -> Path:
    """Write ``model`` (with its attached tokenizer and generation config unless given) atomically.

    A quantized model (``model.quantization``, a QuantSpec) is written in its stored format, and
    config.json gets the ``quantization`` entry. ``extra_files`` maps a file name to
    JSON-serialisable content or bytes written beside the rest. Every checkpoint gets a README.md
    model card: ``card`` as the workflow filled it (training, data, metrics), completed here with
    the architecture; without one, a card that says no training was recorded.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    gen = generation_config or getattr(model, "generation_config", None) or GenerationConfig.for_model(model.config)
    quantization = getattr(model, "quantization", None)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.config.to_dict()}
    if quantization is not None:
        config[QUANTIZATION] = quantization.to_dict()
    card = card or ModelCard("Saved with `llmkit.save`; llmkit recorded no training for it.")
    card = card.with_defaults(
        name=card.name or model.config.name,
        architecture=architecture(model.config.to_dict(), sum(count_parameters(model.config).values())),
    )
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        save_file(unique_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / GENERATION).write_text(json.dumps(gen.to_dict(), indent=2))
        if tokenizer is not None:
            tokenizer.save(tmp)
        (tmp / CARD).write_text(render(card), encoding="utf-8")
        for name, content in (extra_files or {}).items():
            data = content if isinstance(content, bytes) else json.dumps(content, indent=2).encode()
            (tmp / name).write_bytes(data)
    return Path(directory)


# ---- loading --------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    """A JSON object of a checkpoint directory; a missing or corrupt file raises a one-line LlmkitError."""
    return files.read_json(
        path, "restore the file or re-save the checkpoint", f"is {path.parent} a complete llmkit checkpoint?"
    )


def read_config_json(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of an llmkit checkpoint directory, checked to be ours."""
    path = Path(directory) / CONFIG
    if not Path(directory).is_dir():
        raise LlmkitError(f"{directory}: no such checkpoint directory", "check the path")
    data = read_json(path)
    if data.get("format") != FORMAT:
        kind = data.get("model_type") or data.get("architectures") or "unknown"
        raise LlmkitError(
            f"{path}: unknown architecture '{kind}' (not an llmkit config)",
            f"for a Hugging Face checkpoint run: llmkit convert --from-hf {directory} OUT",
        )
    return data


def load_config(directory: str | os.PathLike) -> ModelConfig:
    """Read and validate config.json of an llmkit checkpoint directory."""
    path = Path(directory) / CONFIG
    data = read_config_json(directory)
    data = {k: v for k, v in data.items() if k not in ("format", "format_version", QUANTIZATION)}
    try:
        return ModelConfig.from_dict(data, source=str(path))
    except TypeError as err:
        raise LlmkitError(f"{path}: invalid config ({err})", "re-save the checkpoint") from None


def load_quantization(directory: str | os.PathLike) -> QuantSpec | None:
    """The checkpoint's quantization (validated), or None for a plain one."""
    data = read_config_json(directory)
    if QUANTIZATION not in data:
        return None
    return QuantSpec.from_dict(data[QUANTIZATION], source=str(Path(directory) / CONFIG))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; truncation or corruption becomes an error that names the file."""
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", f"is {path.parent} a complete llmkit checkpoint?")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for bad headers and short files
        raise LlmkitError(
            f"{path}: corrupt or truncated safetensors file ({err})", "restore it or re-save the checkpoint"
        ) from None


def load_state_dict_checked(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``weights`` into ``model`` after checking names and shapes; tied aliases may be absent."""
    expected = model.state_dict()
    aliases = set(expected) - set(unique_state_dict(model))
    missing = sorted(set(expected) - set(weights) - aliases)
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        raise LlmkitError(f"{source}: missing tensor '{missing[0]}' ({len(missing)} missing)", _MISMATCH_HINT)
    if unexpected:
        raise LlmkitError(
            f"{source}: unexpected tensor '{unexpected[0]}' ({len(unexpected)} unexpected)", _MISMATCH_HINT
        )
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise LlmkitError(
                f"{source}: tensor '{name}' has shape {tuple(tensor.shape)}, config expects "
                f"{tuple(expected[name].shape)}",
                _MISMATCH_HINT,
            )
        # quantized weights must keep their integer type: copying would silently convert them
        if not expected[name].is_floating_point() and tensor.dtype != expected[name].dtype:
            raise LlmkitError(
                f"{source}: tensor '{name}' has dtype {tensor.dtype}, config expects {expected[name].dtype}",
                _MISMATCH_HINT,
            )
    model.load_state_dict(weights, strict=False)


_MISMATCH_HINT = "config.json and model.safetensors do not belong together; re-save or re-convert the checkpoint"


def load(
    directory: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """Load a checkpoint directory: a ready model in eval mode with ``.tokenizer`` (or None),
    ``.generation_config`` and ``.quantization`` (a QuantSpec, or None) attached.

    A quantized checkpoint: fp16/bf16 load in that dtype unless ``dtype`` says otherwise; int8/int4
    load as quantized modules (norms and biases in ``dtype``, fp32 by default) that run through
    torch's CPU kernels on CPU (``llmkit.quantize.use_kernels``).
    """
    directory = Path(directory)
    cfg = load_config(directory)
    quantization = load_quantization(directory)
    weights = read_weights(directory / WEIGHTS)
    tokenizer = load_tokenizer(directory, cfg)
    gen_path = directory / GENERATION
    gen = GenerationConfig.from_dict(read_json(gen_path)) if gen_path.exists() else GenerationConfig.for_model(cfg)
    model = build_model(cfg, init=False)
    if quantization is not None:
        quantize_model(model, quantization, empty=True)  # the stored layout, to be filled below
        dtype = dtype or quantization.dtype
    load_state_dict_checked(model, weights, str(directory / WEIGHTS))
    model.tokenizer = tokenizer
    model.generation_config = gen
    model.quantization = quantization
    model = model.to(device=device, dtype=dtype).eval()
    return use_kernels(model) if quantization is not None and not quantization.is_cast else model


def load_tokenizer(directory: Path, cfg: ModelConfig) -> Tokenizer | None:
    """The checkpoint's tokenizer, checked to fit the embedding; None when the directory has none."""
    if not (directory / TOKENIZER).exists():
        return None
    tokenizer = Tokenizer.from_dir(directory)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise LlmkitError(
            f"{directory / TOKENIZER}: vocabulary of {tokenizer.vocab_size} tokens is larger than the model's "
            f"embedding ({cfg.vocab_size} rows)",
            "use the tokenizer the model was built with, or rebuild the model with a larger vocab_size",
        )
    return tokenizer
