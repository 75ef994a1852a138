"""Encoder-only model (BERT): bidirectional stack with an MLM head, a sequence or token classifier, or no head."""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.models.dropout import Dropout
from llmkit.models.embeddings import Embeddings
from llmkit.models.layers import ACTIVATIONS, make_norm
from llmkit.models.output import ModelOutput
from llmkit.models.stack import Stack


class Pooler(nn.Module):
    """BERT's pooled output: tanh(dense(hidden state of the first token, [CLS]))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))  # (B, C)


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder (tied to the word embeddings) + its own bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = ACTIVATIONS[cfg.activation]
        self.norm = make_norm(cfg)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(x)))) + self.bias  # (B, T, V)


class EncoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.stack = Stack(cfg, cfg.n_layer, causal=False)
        self.pooler = Pooler(cfg) if cfg.pooler or cfg.encoder_head == "classifier" else None
        self.mlm_head = MaskedLMHead(cfg) if cfg.encoder_head == "mlm" else None
        if self.mlm_head is not None and cfg.tie_embeddings:
            self.mlm_head.decoder.weight = self.embed.tokens.weight
        # classifier: on the pooled [CLS] state (BertForSequenceClassification); token_classifier: on
        # every position's state (BertForTokenClassification, no pooler needed)
        classifies = cfg.encoder_head in ("classifier", "token_classifier")
        self.classifier = nn.Linear(cfg.d_model, cfg.num_labels) if classifies else None
        self.drop = Dropout(cfg.dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """input_ids (B, T) -> MLM logits (B, T, V), class logits (B, L), per-token class logits
        (B, T, L), or no logits (base model)."""
        x = self.embed(input_ids, position_ids, token_type_ids)  # (B, T, C)
        # training a sequence classifier: the stack computes the [CLS] states alone in its last block
        # (the pooler reads nothing else), so last_hidden_state is then (B, 1, C)
        cls_only = self.training and self.config.encoder_head == "classifier" and not output_attentions
        outputs = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if cls_only else None
        x, attentions, _ = self.stack(
            x, attention_mask=attention_mask, position_ids=position_ids, output_attentions=output_attentions,
            outputs=outputs,
        )  # fmt: skip
        pooled = self.pooler(x) if self.pooler is not None else None
        if self.mlm_head is not None:
            logits = self.mlm_head(x)
        elif self.config.encoder_head == "token_classifier":
            logits = self.classifier(self.drop(x))  # (B, T, L)
        elif self.classifier is not None:
            logits = self.classifier(self.drop(pooled))  # (B, L)
        else:
            logits = None
        return ModelOutput(
            logits=logits, last_hidden_state=x, pooled=pooled, attentions=attentions if output_attentions else None
        )
