"""Checkpoint directories: config.json, model.safetensors, tokenizer.json, generation_config.json.

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

from llmkit.config import GenerationConfig, ModelConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.files import atomic_directory
from llmkit.models import build_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
GENERATION = "generation_config.json"
FORMAT = "llmkit"  # marks our config.json apart from a Hugging Face one
FORMAT_VERSION = 1


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
) -> Path:
    """Write ``model`` (with its attached tokenizer and generation config unless given) atomically.

    ``extra_files`` maps a file name to JSON-serialisable content or bytes written beside the rest.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    gen = generation_config or getattr(model, "generation_config", None) or GenerationConfig.for_model(model.config)
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG).write_text(
            json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **model.config.to_dict()}, indent=2)
        )
        save_file(unique_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / GENERATION).write_text(json.dumps(gen.to_dict(), indent=2))
        if tokenizer is not None:
            tokenizer.save(tmp)
        for name, content in (extra_files or {}).items():
            data = content if isinstance(content, bytes) else json.dumps(content, indent=2).encode()
            (tmp / name).write_bytes(data)
    return Path(directory)


# ---- loading --------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", f"is {path.parent} a complete llmkit checkpoint?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LlmkitError(f"{path}: not valid JSON ({err})", "restore the file or re-save the checkpoint") from None
    if not isinstance(data, dict):
        raise LlmkitError(f"{path}: expected a JSON object", "restore the file or re-save the checkpoint")
    return data


def load_config(directory: str | os.PathLike) -> ModelConfig:
    """Read and validate config.json of an llmkit checkpoint directory."""
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
    data = {k: v for k, v in data.items() if k not in ("format", "format_version")}
    try:
        return ModelConfig.from_dict(data, source=str(path))
    except TypeError as err:
        raise LlmkitError(f"{path}: invalid config ({err})", "re-save the checkpoint") from None


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
    model.load_state_dict(weights, strict=False)


_MISMATCH_HINT = "config.json and model.safetensors do not belong together; re-save or re-convert the checkpoint"


def load(
    directory: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """Load a checkpoint directory: a ready model in eval mode with ``.tokenizer`` (or None) and
    ``.generation_config`` attached."""
    directory = Path(directory)
    cfg = load_config(directory)
    weights = read_weights(directory / WEIGHTS)
    tokenizer = load_tokenizer(directory, cfg)
    gen_path = directory / GENERATION
    gen = GenerationConfig.from_dict(read_json(gen_path)) if gen_path.exists() else GenerationConfig.for_model(cfg)
    model = build_model(cfg, init=False)
    load_state_dict_checked(model, weights, str(directory / WEIGHTS))
    model.tokenizer = tokenizer
    model.generation_config = gen
    return model.to(device=device, dtype=dtype).eval()


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
