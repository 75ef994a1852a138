"""Input embeddings: tokens, plus learned or sinusoidal positions and BERT's token types."""

from __future__ import annotations

import math

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.models.layers import make_norm, sinusoidal_table


class Embeddings(nn.Module):
    """token [* sqrt(C) for sinusoidal] + position + token type [-> LayerNorm for post-norm (BERT)]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_seq_len = cfg.max_seq_len
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos == "learned" else None
        if cfg.pos == "sinusoidal":
            self.register_buffer("sinusoid", sinusoidal_table(cfg.max_seq_len, cfg.d_model), persistent=False)
        else:
            self.sinusoid = None
        # Vaswani et al. 2017 sec. 3.4: embeddings are multiplied by sqrt(d_model) before adding PE
        self.scale = math.sqrt(cfg.d_model) if cfg.pos == "sinusoidal" else 1.0
        self.token_types = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg) if cfg.norm_placement == "post" else nn.Identity()

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        past: int = 0,
    ) -> torch.Tensor:
        """Positions are ``past, past + 1, ...`` unless ``position_ids`` says otherwise (left padding)."""
        T = input_ids.shape[1]
        absolute = self.positions is not None or self.sinusoid is not None
        if position_ids is None:
            if absolute and past + T > self.max_seq_len:
                self._too_long(past + T)
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None]
        elif absolute and not torch.compiler.is_compiling():
            # reading the largest position is a host sync: done for explicit positions only, and
            # not inside a compiled graph (where it would break the graph every decoding step)
            longest = int(position_ids.max()) + 1
            if longest > self.max_seq_len:
                self._too_long(longest)
        x = self.tokens(input_ids) * self.scale  # (B, T, C)
        if absolute:
            x = x + (self.positions(position_ids) if self.positions is not None else self.sinusoid[position_ids])
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_types(token_type_ids)
        return self.norm(x)

    def _too_long(self, positions: int) -> None:
        raise LlmkitError(
            f"sequence of {positions} positions exceeds the context window of {self.max_seq_len}",
            "shorten the input or truncate it to max_seq_len",
        )
