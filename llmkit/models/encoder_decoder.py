"""Encoder-decoder model (T5): a bidirectional encoder, a causal decoder with cross-attention,
one token embedding shared by both, and T5's rules for the LM head."""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.models.cache import KVCache
from llmkit.models.embeddings import Embeddings
from llmkit.models.output import ModelOutput
from llmkit.models.stack import Stack


class EncoderDecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.encoder = Stack(cfg, cfg.n_layer, causal=False)
        self.decoder = Stack(cfg, cfg.n_decoder_layer, causal=True, cross=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.tokens.weight
        # T5 v1.0 rescales before its tied head; v1.1 and flan-T5 (untied) do not
        self.output_scale = cfg.d_model**-0.5 if cfg.scale_decoder_output else 1.0

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple]:
        """input_ids (B, S) -> encoder states (B, S, C), run once per prompt."""
        x, attentions, _ = self.encoder(
            self.embed(input_ids), attention_mask=attention_mask, output_attentions=output_attentions
        )
        return x, attentions

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
        """decoder_input_ids (B, T) over encoder states -> (logits (B, T, V), hidden, self and cross weights).

        With a ``cache``: the T tokens follow the cached ones, and the cross-attention keys and
        values of ``memory`` are computed at the first call only.
        """
        past = cache.length if cache is not None else 0
        x, attentions, cross = self.decoder(
            self.embed(decoder_input_ids, past=past), attention_mask=decoder_attention_mask,
            memory=memory, memory_mask=memory_mask, output_attentions=output_attentions, cache=cache,
        )  # fmt: skip
        return self.lm_head(x * self.output_scale), x, attentions, cross

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """Without ``decoder_input_ids`` the decoder gets one ``decoder_start_token_id`` per row."""
        if decoder_input_ids is None:
            start = self.config.decoder_start_token_id
            decoder_input_ids = torch.full((input_ids.shape[0], 1), start, device=input_ids.device)
        memory, enc_attn = self.encode(input_ids, attention_mask, output_attentions)
        logits, x, attentions, cross = self.decode(
            decoder_input_ids, memory, attention_mask, decoder_attention_mask, output_attentions
        )
        keep = output_attentions
        return ModelOutput(
            logits=logits,
            last_hidden_state=x,
            attentions=attentions if keep else None,
            cross_attentions=cross if keep else None,
            encoder_attentions=enc_attn if keep else None,
            encoder_last_hidden_state=memory,
        )
