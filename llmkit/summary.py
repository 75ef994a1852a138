"""What `llmkit inspect` shows: architecture, parameters by component, weight memory per precision.

Counts come from the built model (on the meta device for presets, so no memory is allocated);
tied weights are counted once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch import nn

from llmkit import units
from llmkit.config import ModelConfig

# bytes per parameter of the weights alone (int4 packs two per byte; per-group scales not included)
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}

_COMPONENTS = (  # (name fragment, component): first match wins
    ("mlm_head", "mlm head"),
    ("lm_head", "lm head"),
    ("pooler", "pooler"),
    ("classifier", "classifier"),
    ("rel_bias", "position bias"),
    ("embed.positions", "position embeddings"),
    ("embed.token_types", "token-type embeddings"),
    ("embed.tokens", "token embeddings"),
    ("embed.norm", "norms"),
    ("cross_attn.", "cross-attention"),
    ("attn.", "attention"),
    ("mlp.", "feed-forward"),
    ("norm", "norms"),
)


def component_of(name: str) -> str:
    for fragment, component in _COMPONENTS:
        if fragment in name:
            return component
    return "other"


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameters per component, each tensor counted once (tied heads add nothing)."""
    counts: Counter[str] = Counter()
    for name, param in model.named_parameters():  # named_parameters skips tied aliases
        counts[component_of(name)] += param.numel()
    return dict(counts)


@dataclass
class ModelSummary:
    config: ModelConfig
    parameters: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parameters.values())

    def weight_bytes(self) -> dict[str, float]:
        return {dtype: self.total * b for dtype, b in BYTES_PER_PARAM.items()}

    def architecture(self) -> str:
        c = self.config
        attn = "multi-head" if c.n_kv_head == c.n_head else f"grouped-query ({c.n_kv_head} kv heads)"
        layers = f"{c.n_layer} encoder + {c.n_decoder_layer} decoder" if c.family == "encoder_decoder" else c.n_layer
        return (
            f"{c.family} | layers {layers} | d_model {c.d_model} | heads {c.n_head} x {c.head_dim} ({attn}) | "
            f"d_ff {c.d_ff} {c.mlp} {c.activation} | {c.norm_placement}-{c.norm} | positions {c.pos} | "
            f"tied embeddings {c.tie_embeddings}"
        )

    def head_note(self) -> str | None:
        """How the output head enters the count: its own matrix (untied, as Llama-2 or flan-T5, where a
        model's headline size often leaves it out) or the token embeddings shared (counted once)."""
        c, head = self.config, self.parameters.get("lm head", 0)
        if head:
            body = self.total - head
            return (
                f"lm head: its own {c.vocab_size:,} x {c.d_model:,} matrix ({human_count(head)}, untied from the token "
                f"embeddings), {head / self.total:.1%} of the total; without it {human_count(body)} ({body:,})"
            )
        if c.has_classifier or (c.family == "encoder" and c.encoder_head == "none"):
            return None  # no language-model head
        if c.tie_embeddings:
            head = "mlm head's decoder" if c.family == "encoder" else "lm head"
            return f"{head}: shares the token embeddings' matrix (tied), counted once, under token embeddings"
        return None


def summarize(model: nn.Module) -> ModelSummary:
    return ModelSummary(config=model.config, parameters=parameter_breakdown(model))


def human_bytes(n: float) -> str:
    """Binary units with one decimal, as `llmkit inspect` prints file and weight sizes: 474.7 MiB."""
    return units.human_bytes(n, base=1024, decimals=1)


def human_count(n: int) -> str:
    """A count with two decimals, as `llmkit inspect` prints parameters: 124.44M."""
    return units.human_count(n, decimals=2)
