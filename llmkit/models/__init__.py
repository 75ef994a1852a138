"""build_model(cfg): one entry point for the three families, dispatching on ``cfg.family``."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.models.decoder import DecoderLM
from llmkit.models.encoder import EncoderModel
from llmkit.models.encoder_decoder import EncoderDecoderLM
from llmkit.models.layers import RMSNorm
from llmkit.models.output import ModelOutput

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "decoder": DecoderLM,
    "encoder": EncoderModel,
    "encoder_decoder": EncoderDecoderLM,
}

__all__ = [
    "DecoderLM",
    "EncoderDecoderLM",
    "EncoderModel",
    "ModelOutput",
    "build_model",
    "init_weights",
    "set_activation_checkpointing",
]


def build_model(cfg: ModelConfig, device: torch.device | str | None = None, init: bool = True) -> nn.Module:
    """Construct the model for ``cfg``; ``device="meta"`` builds the shapes without memory (and without
    running torch's initializers, which have no values to fill there)."""
    meta = str(device) == "meta"
    with torch.device(device or "cpu"), skip_torch_init() if meta else nullcontext():
        model = MODEL_CLASSES[cfg.family](cfg)
    if init and str(device) != "meta":
        init_weights(model, cfg)
    return model


# torch.nn.init's functions that module constructors call (nn.Linear, nn.Embedding, norms)
_TORCH_INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "kaiming_uniform_",
                "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_")  # fmt: skip


_SKIPPING = threading.local()  # .depth > 0: this thread is inside skip_torch_init
_INSTALL_LOCK = threading.Lock()


def _skippable(original: Callable) -> Callable:
    @functools.wraps(original)
    def init(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return tensor if getattr(_SKIPPING, "depth", 0) else original(tensor, *args, **kwargs)

    init.llmkit_skippable = True
    return init


def _install_skippable_inits() -> None:
    """Wrap torch.nn.init's functions once per process so that each can be skipped per thread."""
    with _INSTALL_LOCK:
        for name in _TORCH_INITS:
            function = getattr(nn.init, name)
            if not getattr(function, "llmkit_skippable", False):
                setattr(nn.init, name, _skippable(function))


@contextmanager
def skip_torch_init() -> Iterator[None]:
    """torch.nn.init's initializers as no-ops, in this thread only, while module constructors run (as
    transformers' ``no_init_weights``): for a build on the meta device, where they fill nothing. There
    they cost the most: the first meta ``normal_`` of a process (nn.Embedding's) imports torch._dynamo,
    1.5-3 s that every checkpoint load paid in ``check_header``. Why per thread: swapping the functions
    for the process (as this did) left them as no-ops for a model built in another thread meanwhile, and,
    when two such blocks overlapped, for good."""
    _install_skippable_inits()
    _SKIPPING.depth = getattr(_SKIPPING, "depth", 0) + 1
    try:
        yield
    finally:
        _SKIPPING.depth -= 1


@torch.no_grad()
def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Normal(0, init_std) for weights and embeddings, zeros for biases, ones for norm gains.

    Residual output projections get init_std / sqrt(2 * layers) (GPT-2 paper, sec. 2.3) so the
    residual stream does not grow with depth. Without score scaling (T5), the query weights take
    the 1/sqrt(head_dim) factor instead, as T5's own init does.
    """
    n_layers = cfg.n_layer + (cfg.n_decoder_layer if cfg.family == "encoder_decoder" else 0)
    residual_std = cfg.init_std / math.sqrt(2 * n_layers)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = residual_std if name.endswith((".o", ".down")) else cfg.init_std
            if name.endswith(".q") and not cfg.scale_attn:
                std = cfg.init_std * cfg.head_dim**-0.5
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, cfg.init_std)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def set_activation_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Recompute every block's activations during backward (less memory, about 1/3 more compute)."""
    from llmkit.models.stack import Stack

    for module in model.modules():
        if isinstance(module, Stack):
            module.activation_checkpointing = enabled
