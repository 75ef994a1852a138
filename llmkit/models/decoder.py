"""Decoder-only causal LM: GPT-2 (learned positions, LayerNorm, GELU) and Llama (RoPE, RMSNorm,
SwiGLU, grouped-query attention) are the same class with different configs.

With ``decoder_head = "classifier"`` the LM head is replaced by ``score`` (no bias), read at each
row's last real token, as transformers' LlamaForSequenceClassification does.
"""

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
        self.lm_head = self.score = None
        if cfg.decoder_head == "classifier":
            self.score = nn.Linear(cfg.d_model, cfg.num_labels, bias=False)
        else:
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
        logits_at: torch.Tensor | None = None,
    ) -> ModelOutput:
        """input_ids (B, T) -> logits (B, T, V) for the next token at every position.

        With a ``cache``, input_ids are the T tokens after the cached ones; positions continue
        from ``cache.length`` unless ``position_ids`` says otherwise (left-padded batches do).
        ``logits_at`` (B, T) bool: the LM head runs at those positions only, and logits are (N, V) in
        row-major order (fine-tuning on responses: the loss reads nothing else).
        """
        past = cache.length if cache is not None else 0
        x = self.embed(input_ids, position_ids, past=past)  # (B, T, C)
        # training a sequence classifier: the stack computes each row's last real state alone in its
        # last block (the score head reads nothing else), so last_hidden_state is then (B, 1, C)
        last_only = self.score is not None and self.training and not output_attentions and cache is None
        outputs = last_positions(input_ids, attention_mask, self.config.pad_token_id) if last_only else None
        x, attentions, _ = self.stack(
            x, attention_mask=attention_mask, position_ids=position_ids, output_attentions=output_attentions,
            cache=cache, outputs=outputs,
        )  # fmt: skip
        if self.score is not None:
            last = x[:, 0] if last_only else last_real(x, input_ids, attention_mask, self.config.pad_token_id)
            return ModelOutput(logits=self.score(last), last_hidden_state=x,
                               attentions=attentions if output_attentions else None)  # fmt: skip
        return ModelOutput(
            logits=self.lm_head(x if logits_at is None else x[logits_at]),  # (B, T, V) or (N, V)
            last_hidden_state=x,
            attentions=attentions if output_attentions else None,
        )


def last_real(
    x: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_token_id: int | None
) -> torch.Tensor:
    """Each row's state at its last real token (B, T, C) -> (B, C).

    Real tokens are those of ``attention_mask`` when given, else those that are not ``pad_token_id``
    (transformers' rule), else all. The rightmost real position is taken, so right-padded rows read
    their last token and left-padded rows the final position."""
    return x[torch.arange(x.shape[0], device=x.device), last_positions(input_ids, attention_mask, pad_token_id)]


def last_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_token_id: int | None
) -> torch.Tensor:
    """Each row's last real position (B,), by ``last_real``'s rule."""
    if attention_mask is not None:
        real = attention_mask.bool()
    elif pad_token_id is not None:
        real = input_ids != pad_token_id
    else:
        real = torch.ones_like(input_ids, dtype=torch.bool)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * real).argmax(-1)  # (B,)
