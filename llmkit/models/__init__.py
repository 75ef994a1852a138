"""build_model(cfg): one entry point for the three families, dispatching on ``cfg.family``."""

from __future__ import annotations

import math

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
    """Construct the model for ``cfg``; ``device="meta"`` builds the shapes without memory."""
    with torch.device(device or "cpu"):
        model = MODEL_CLASSES[cfg.family](cfg)
    if init and str(device) != "meta":
        init_weights(model, cfg)
    return model


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
