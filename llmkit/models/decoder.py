"""Decoder-only causal LM: GPT-2 (learned positions, LayerNorm, GELU) and Llama (RoPE, RMSNorm,
SwiGLU, grouped-query attention) are the same class with different configs."""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.models.cache import KVCache
from llmkit.models.embeddings import Embeddings
from llmkit.models.output import ModelOutput
from llmkit.models.stack import Stack


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.stack = Stack(cfg, cfg.n_layer, causal=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
        cache: KVCache | None = None,
    ) -> ModelOutput:
        """input_ids (B, T) -> logits (B, T, V) for the next token at every position.

        With a ``cache``, input_ids are the T tokens after the cached ones; positions continue
        from ``cache.length`` unless ``position_ids`` says otherwise (left-padded batches do).
        """
        past = cache.length if cache is not None else 0
        x = self.embed(input_ids, position_ids, past=past)  # (B, T, C)
        x, attentions, _ = self.stack(
            x, attention_mask=attention_mask, position_ids=position_ids, output_attentions=output_attentions,
            cache=cache,
        )  # fmt: skip
        return ModelOutput(
            logits=self.lm_head(x),  # (B, T, V)
            last_hidden_state=x,
            attentions=attentions if output_attentions else None,
        )
