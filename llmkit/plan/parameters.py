"""Parameters of a ModelConfig by component, the weights of its matrix multiplies, and a model given
only by its parameter count (with an assumed GPT-3-like shape)."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _norm(cfg: ModelConfig) -> int:
    """RMSNorm has a gain only; LayerNorm a gain and, when the model has biases, a bias."""
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def _attention(cfg: ModelConfig) -> int:
    """q and o are (n_head * head_dim) wide, k and v (n_kv_head * head_dim): grouped-query attention."""
    d, q, kv = cfg.d_model, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    qkv_bias = cfg.bias or cfg.qkv_bias
    return _linear(d, q, qkv_bias) + 2 * _linear(d, kv, qkv_bias) + _linear(q, d, cfg.bias)


def _mlp(cfg: ModelConfig) -> int:
    """up and down, plus a gate for gated MLPs (SwiGLU, GEGLU)."""
    ups = 2 if cfg.mlp == "gated" else 1
    return ups * _linear(cfg.d_model, cfg.d_ff, cfg.bias) + _linear(cfg.d_ff, cfg.d_model, cfg.bias)


def stacks(cfg: ModelConfig) -> list[tuple[int, bool]]:
    """(layers, has cross-attention) per stack: one for decoders and encoders, two for T5."""
    if cfg.family == "encoder_decoder":
        return [(cfg.n_layer, False), (cfg.n_decoder_layer, True)]
    return [(cfg.n_layer, False)]


def count_parameters(cfg: ModelConfig) -> dict[str, int]:
    """Parameters per component, computed from the config alone; tied weights count once.

    The components are those ``llmkit.summary`` reads off a built model (token / position /
    token-type embeddings, position bias, attention, cross-attention, feed-forward, norms, lm head,
    mlm head, pooler, classifier), so the two can be compared entry by entry.
    """
    d, n = cfg.d_model, Counter()
    n["token embeddings"] += cfg.vocab_size * d
    if cfg.pos == "learned":
        n["position embeddings"] += cfg.max_seq_len * d
    n["token-type embeddings"] += cfg.type_vocab_size * d
    if cfg.norm_placement == "post":
        n["norms"] += _norm(cfg)  # BERT normalizes the embeddings
    for layers, cross in stacks(cfg):
        if cfg.pos == "relative":
            n["position bias"] += cfg.rel_buckets * cfg.n_head  # one table per stack (T5)
        n["attention"] += layers * _attention(cfg)
        n["cross-attention"] += layers * _attention(cfg) if cross else 0
        n["feed-forward"] += layers * _mlp(cfg)
        n["norms"] += layers * (3 if cross else 2) * _norm(cfg)
        n["norms"] += _norm(cfg) if cfg.norm_placement == "pre" else 0  # final norm of pre-norm stacks
    untied_head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    if cfg.family != "encoder":
        n["lm head"] += untied_head
    else:
        if cfg.pooler or cfg.encoder_head == "classifier":
            n["pooler"] += _linear(d, d, True)
        if cfg.encoder_head == "mlm":  # dense -> norm -> decoder (tied or not) + its own bias
            n["mlm head"] += _linear(d, d, True) + _norm(cfg) + untied_head + cfg.vocab_size
        if cfg.encoder_head == "classifier":
            n["classifier"] += _linear(d, cfg.num_labels, True)
    return {name: count for name, count in n.items() if count}


def block_matmul_weights(cfg: ModelConfig, cross: bool = False) -> int:
    """Matrix-multiply weights of one block: q, k, v, o (twice with cross-attention) and the MLP."""
    d, q, kv = cfg.d_model, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    attention = d * (2 * q + 2 * kv)
    return attention * (2 if cross else 1) + (3 if cfg.mlp == "gated" else 2) * d * cfg.d_ff


def head_matmul_weights(cfg: ModelConfig) -> int:
    """Matrix-multiply weights outside the blocks: the LM head (tied or not: it still multiplies),
    BERT's MLM dense and decoder, pooler and classifier."""
    d = cfg.d_model
    if cfg.family != "encoder":
        return cfg.vocab_size * d
    pooler = d * d if cfg.pooler or cfg.encoder_head == "classifier" else 0
    mlm = d * d + cfg.vocab_size * d if cfg.encoder_head == "mlm" else 0
    return pooler + mlm + (d * cfg.num_labels if cfg.encoder_head == "classifier" else 0)


def matmul_weights(cfg: ModelConfig) -> int:
    """Weights of every matrix multiply (every nn.Linear weight, the tied head included): the N of
    6N FLOPs per token. Embedding lookups and biases cost no multiply-adds worth counting."""
    blocks = sum(layers * block_matmul_weights(cfg, cross) for layers, cross in stacks(cfg))
    return blocks + head_matmul_weights(cfg)


_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str) -> int:
    """A positive count written as ``7e9``, ``1.3B``, ``350M``, ``125k``, ``2T`` or ``1_000_000``."""
    match = re.fullmatch(r"\s*([0-9][0-9_]*\.?[0-9]*(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*", text.lower())
    value = float(match[1].replace("_", "")) * _SUFFIXES[match[2]] if match else 0.0
    if not match or not math.isfinite(value) or value < 1:
        raise LlmkitError(f"'{text}' is not a positive count", "write it like 7e9, 1.3B, 350M or 125k")
    return round(value)


@dataclass
class ModelSize:
    """What the planner knows of a model: its config, and its parameter counts.

    For a bare parameter count the config is an assumed GPT-3-like shape (``from_count``): memory and
    6N use the count exactly, the shape only sizes activations, the KV cache and attention FLOPs.
    """

    cfg: ModelConfig
    parameters: int
    matmul_parameters: int  # N of 6N
    components: dict[str, int]
    source: str
    assumed_shape: bool = False

    @classmethod
    def from_config(cls, cfg: ModelConfig, source: str) -> ModelSize:
        components = count_parameters(cfg)
        return cls(cfg, sum(components.values()), matmul_weights(cfg), components, source)

    @classmethod
    def from_count(cls, count: int, seq: int = 2048) -> ModelSize:
        """A decoder of ``count`` parameters shaped like GPT-3 (Brown et al. 2020, table 2.1): width
        128 x layers, heads of 128, d_ff = 4 x width, GPT-2's vocabulary. With 12 x layers x width^2
        parameters in the blocks, layers = (count / (12 * 128^2))^(1/3): 175e9 gives GPT-3's 96 x 12288."""
        layers = max(1, round((count / (12 * 128**2)) ** (1 / 3)))
        cfg = ModelConfig(d_model=128 * layers, n_layer=layers, n_head=layers, max_seq_len=max(seq, 2048))
        return cls(cfg, count, count, {"given": count}, f"{count:,} parameters (given)", assumed_shape=True)
