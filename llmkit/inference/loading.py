"""A checkpoint loaded for inference on the device and in the dtype a user names ("auto", "bf16", ...)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from torch import nn

from llmkit import checkpoint
from llmkit.config import ModelConfig
from llmkit.devices import resolve_device, resolve_dtype
from llmkit.errors import LlmkitError
from llmkit.model_card import aliases, body, read


def load_model(
    directory: str | os.PathLike, device: str = "auto", dtype: str | None = None, verify: bool = True
) -> nn.Module:
    """``checkpoint.load`` on ``resolve_device(device)``, cast to ``dtype`` (fp32, bf16, fp16; None: as stored),
    its files checked against the manifest unless ``verify`` is False (the commands' ``--no-verify``)."""
    return checkpoint.load(directory, device=resolve_device(device), dtype=resolve_dtype(dtype), verify=verify)


def head_kind(cfg: ModelConfig) -> str | None:
    """``"sequence"`` or ``"token"`` for a checkpoint with a classification head, else None."""
    if not cfg.has_classifier:
        return None
    return "token" if cfg.family == "encoder" and cfg.encoder_head == "token_classifier" else "sequence"


def require_lm_head(source: str | os.PathLike | nn.Module, command: str, instead: str = "predict MODEL TEXT") -> None:
    """A one-line error naming ``llmkit predict`` when ``source`` (a checkpoint directory, read from its
    config.json alone, or a loaded model) has a classification head, which ``command`` cannot use.

    Every command that needs a language-model head calls this before it loads or runs the model:
    a classifier has no vocabulary scores, and decoding or scoring it fails deep inside torch.
    ``instead``: the llmkit command that can use it (MODEL stands for the checkpoint).
    """
    if isinstance(source, nn.Module):
        cfg, name = source.config, None  # a loaded model does not know its folder
    else:
        if not (Path(source) / checkpoint.CONFIG).is_file():
            return  # not a checkpoint: the command's own loading says so
        cfg, name = checkpoint.load_config(source), str(source)
    kind = head_kind(cfg)
    if kind is None:
        return
    labels = cfg.label_names()
    shown = ", ".join(labels[:8]) + (f", ... ({len(labels)} in all)" if len(labels) > 8 else "")
    raise LlmkitError(
        f"{name or 'this model'} has a {kind}-classification head (labels {shown}); {command} needs a "
        "language-model head",
        f"use `llmkit {instead.replace('MODEL', name or 'MODEL')}`" + ("" if name else " (llmkit.predict in Python)"),
    )


def model_name(directory: str | os.PathLike) -> str:
    """The name a checkpoint carries: its model card's title (README.md ``# NAME``, written by ``init``,
    ``pretrain``, ``convert`` and ``quantize``, or their ``--name``), else config.json's ``name``, else its
    folder's name. The one name of a model: what ``inspect`` and ``chat`` show, the served model id, the
    card's title, eval folders and plot titles use."""
    card = read(directory)
    if card:
        title = next((line[2:].strip() for line in body(card).splitlines() if line.startswith("# ")), "")
        if title and title != "llmkit model":  # the title of a card written without a name
            return title
    config = Path(directory) / checkpoint.CONFIG
    try:
        name = checkpoint.read_json(config).get("name") if config.is_file() else None
    except LlmkitError:  # a corrupt config.json is reported by whatever loads the model; here the folder names it
        name = None
    return name or Path(directory).resolve().name


def name_slug(name: str) -> str:
    """``name`` as one word for ids and folder names: runs of other characters become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def model_aliases(directory: str | os.PathLike) -> list[str]:
    """``model_name`` first, then the other names the same model answers to when served: the name as one word
    (``name_slug``), and the card's ``aliases`` (a conversion's origin, such as the Hugging Face repository
    "HuggingFaceTB/SmolLM2-135M-Instruct"), each once, in that order."""
    name = model_name(directory)
    card = read(directory)
    names = [name, name_slug(name), *(aliases(card) if card else [])]
    return list(dict.fromkeys(names))
