"""LoRA adapters in peft's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are ``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` (peft strips the
adapter's name when it saves), and ``base_model.model.<parameter name>`` for modules trained in full
(``modules_to_save``). Module paths are those of the transformers model ``llmkit convert --to-hf``
writes for the base, so ``peft.PeftModel.from_pretrained(hf_model, adapter_dir)`` loads an llmkit
adapter, and ``load_adapter`` reads a peft one. A base that has no transformers architecture (or a
targeted layer with no one-to-one HF module, such as GPT-2's Conv1D layers) is saved under llmkit's
own module paths: the same format, readable by llmkit only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.files import atomic_directory, read_json
from llmkit.lora.config import LoraConfig
from llmkit.lora.layers import apply_lora, lora_layers, lora_state_dict, modules_to_save
from llmkit.lora.targets import hf_names, linear_layers

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."
A, B = ".lora_A.weight", ".lora_B.weight"
# peft LoraConfig fields llmkit cannot honour, and the value that means "not used"
UNSUPPORTED = {
    "use_dora": False,
    "fan_in_fan_out": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
    "lora_bias": False,
}


def task_type(model: nn.Module) -> str | None:
    """peft's task type for the class ``--to-hf`` writes: it picks the PeftModel subclass on load."""
    cfg = model.config
    if cfg.family == "decoder":  # a classifier's is *ForSequenceClassification: peft's SEQ_CLS wraps it
        return "SEQ_CLS" if cfg.has_classifier else "CAUSAL_LM"
    if cfg.family == "encoder_decoder":
        return "SEQ_2_SEQ_LM"
    return "SEQ_CLS" if cfg.encoder_head == "classifier" else None


def _hf_parameter_names(model: nn.Module) -> dict[str, str]:
    from llmkit.hf.modules import parameter_map

    try:
        return parameter_map(model.config)
    except LlmkitError:
        return {}


def _target_modules(chosen: list[str], all_paths: list[str]) -> list[str]:
    """peft's target_modules for ``chosen`` paths: their last names (``q_proj``) when those select
    exactly them among ``all_paths``, else the full paths (peft matches a dotted suffix either way)."""
    last = sorted({p.rsplit(".", 1)[-1] for p in chosen})
    selected = {p for p in all_paths if p.rsplit(".", 1)[-1] in last}
    return last if selected == set(chosen) else list(chosen)


def adapter_files(model: nn.Module, cfg: LoraConfig, base_name_or_path: str) -> tuple[dict[str, Any], dict]:
    """(adapter_config.json as a dict, tensors with peft's key names) of ``model``'s adapter."""
    layers = list(lora_layers(model))
    if not layers:
        raise LlmkitError("the model has no LoRA adapter to save", "call apply_lora (or load_adapter) first")
    modules = hf_names(model)
    params = _hf_parameter_names(model)
    saved = modules_to_save(model, cfg)
    saved_params = {n: p for n, p in lora_state_dict(model).items() if not n.endswith((A, B))}
    use_hf = all(n in modules for n in layers) and all(n in params for n in saved_params)
    to_path = modules.get if use_hf else (lambda n: n)
    to_param = params.get if use_hf else (lambda n: n)
    paths = [to_path(n) for n in layers]
    all_paths = list(modules.values()) if use_hf else [*linear_layers(model), *layers]
    tensors = {}
    wrapped = lora_layers(model)
    for name, path in zip(layers, paths, strict=True):
        layer = wrapped[name]
        tensors[PREFIX + path + A] = layer.lora_A.weight.detach()
        tensors[PREFIX + path + B] = layer.lora_B.weight.detach()
    for name, p in saved_params.items():
        tensors[PREFIX + to_param(name)] = p
    config = {
        "peft_type": "LORA",
        "task_type": task_type(model),
        "base_model_name_or_path": str(base_name_or_path),
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": _target_modules(paths, all_paths),
        "bias": cfg.bias,
        "use_rslora": cfg.use_rslora,
        "modules_to_save": [to_path(n) or n for n in saved] or None,
        "init_lora_weights": True,
        "inference_mode": True,
        **UNSUPPORTED,
    }
    return config, tensors


def save_adapter(model: nn.Module, cfg: LoraConfig, out_dir: str | os.PathLike, base_name_or_path: str) -> Path:
    """Write ``model``'s adapter to ``out_dir`` in peft's format, atomically; return the directory."""
    config, tensors = adapter_files(model, cfg, base_name_or_path)
    with atomic_directory(out_dir) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})
    return Path(out_dir)


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """adapter_config.json, checked: a LoRA adapter using only what llmkit implements."""
    path = Path(directory) / CONFIG
    config = read_json(
        path, "expected peft's adapter_config.json", missing_hint="pass a directory saved by save_adapter or peft"
    )
    if config.get("peft_type") != "LORA":
        raise LlmkitError(
            f"{path}: peft_type '{config.get('peft_type')}' is not LORA", "llmkit reads LoRA adapters only"
        )
    for key, off in UNSUPPORTED.items():
        if config.get(key) not in (off, None):
            raise LlmkitError(
                f"{path}: {key}={config[key]!r} is unsupported", f"llmkit reads adapters with {key}={off!r}"
            )
    if config.get("bias", "none") != "none":
        raise LlmkitError(f"{path}: bias='{config['bias']}' is unsupported", "llmkit reads adapters with bias='none'")
    return config


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> LoraConfig:
    """Wrap ``model``'s layers as the adapter in ``directory`` says and load its tensors; return its config.

    The wrapped layers are those the file holds tensors for (its keys name them; target_modules may
    be a regex or short names). Keys under HF module paths are mapped to llmkit names; llmkit paths
    are read as they are. Every key must land on a layer of the right shape.
    """
    directory = Path(directory)
    config = read_adapter_config(directory)
    if not (directory / WEIGHTS).exists():
        raise LlmkitError(f"{directory}: no {WEIGHTS}", "save the adapter with safetensors (peft's default)")
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except Exception as err:
        raise LlmkitError(
            f"{directory / WEIGHTS}: corrupt or truncated safetensors file ({err})", "save it again"
        ) from None
    ours = _llmkit_names(model, tensors, directory)
    layers = sorted({n.removesuffix(A) for n in ours if n.endswith(A)})
    saved = sorted({n.rpartition(".")[0] for n in ours if not n.endswith((A, B))})
    cfg = LoraConfig(
        rank=int(config["r"]),
        alpha=float(config.get("lora_alpha", 8)),
        dropout=float(config.get("lora_dropout", 0.0)),
        target_modules=layers,
        modules_to_save=saved,
        use_rslora=bool(config.get("use_rslora", False)),
    )
    apply_lora(model, cfg)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in ours.items():
            target = own[name]
            if target.shape != tensor.shape:
                raise LlmkitError(
                    f"{directory / WEIGHTS}: '{name}' has shape {tuple(tensor.shape)}, "
                    f"the model's is {tuple(target.shape)}",
                    "the adapter was trained for another base model (or uses a rank_pattern llmkit does not read)",
                )
            target.copy_(tensor)
    return cfg


def _llmkit_names(model: nn.Module, tensors: dict[str, torch.Tensor], directory: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors under llmkit parameter names (HF paths mapped, llmkit paths kept)."""
    linears = set(linear_layers(model))
    from_hf = {theirs: ours for ours, theirs in hf_names(model).items()}
    params = dict(model.named_parameters())
    from_hf_params = {theirs: ours for ours, theirs in _hf_parameter_names(model).items()}
    out = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        suffix = A if name.endswith(A) else B if name.endswith(B) else None
        if suffix:
            path = name.removesuffix(suffix)
            path = path if path in linears else from_hf.get(path)
        else:
            path = name if name in params else from_hf_params.get(name)
        if path is None:
            raise LlmkitError(
                f"{directory / WEIGHTS}: tensor '{key}' names no layer of this model",
                "the adapter was trained for another base model; check base_model_name_or_path in adapter_config.json",
            )
        out[path + (suffix or "")] = tensor
    return out
