"""What every model returns: logits and, on request, attention maps; never a loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    """Outputs of a forward pass.

    ``attentions`` holds one (B, H, T, S) tensor per layer of the (decoder) self-attention when
    ``output_attentions=True``; encoder-decoder models add ``encoder_attentions`` and
    ``cross_attentions``. ``logits`` is None for an encoder without a head (a base model).
    """

    logits: torch.Tensor | None
    last_hidden_state: torch.Tensor
    pooled: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
