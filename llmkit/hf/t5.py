"""T5 (transformers ``model_type: t5``) <-> llmkit encoder-decoder: RMS norms, relative position
bias, unscaled attention scores, one token embedding shared by both stacks.

The head comes in two file shapes (see DESIGN.md, "Known traps"):

- transformers 5.x saves ``tie_word_embeddings: true`` with ``scale_decoder_outputs`` and only
  ``shared.weight``: a tied head, scaled by d_model**-0.5 when ``scale_decoder_outputs`` says so;
- hub files written by 4.x: T5 v1.1 / flan-T5 say ``tie_word_embeddings: false`` and carry their
  own ``lm_head.weight`` (untied, no scaling); T5 v1.0 (t5-small) says nothing (tied, scaled).

So tying follows the tensors (a distinct ``lm_head.weight`` means untied), and scaling follows
``scale_decoder_outputs`` if present, else ``tie_word_embeddings is not False`` (transformers' rule).
"""

from __future__ import annotations

from typing import Any

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.hf.base import MISMATCH_HINT, StateDict, first_id, reject_leftovers, take

FAMILY = "T5"
# feed_forward_proj -> (mlp, activation); transformers maps "gated-gelu" to gelu_new (tanh GELU)
FEED_FORWARD = {
    "relu": ("standard", "relu"),
    "gated-gelu": ("gated", "gelu_tanh"),
    "gated-gelu_new": ("gated", "gelu_tanh"),
}
FEED_FORWARD_TO_HF = {("standard", "relu"): "relu", ("gated", "gelu_tanh"): "gated-gelu"}
# Aliases of shared.weight that some files store, and a bias transformers ignores on load
ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
REL_BIAS = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # per stack, in layer 0 only
ATTN = ("q", "k", "v", "o")


class T5Converter:
    model_type = "t5"

    def matches(self, cfg: ModelConfig) -> bool:
        return (
            cfg.family == "encoder_decoder"
            and cfg.pos == "relative"
            and cfg.norm == "rmsnorm"
            and cfg.norm_placement == "pre"
            and (cfg.mlp, cfg.activation) in FEED_FORWARD_TO_HF
            and not cfg.bias
            and not cfg.scale_attn
            and cfg.n_kv_head == cfg.n_head
            and not cfg.type_vocab_size
        )

    # ---- config ---------------------------------------------------------------------------
    def config_from_hf(self, hf: dict[str, Any], state_dict: StateDict) -> ModelConfig:
        """Read a T5Config dict; absent keys take T5Config's defaults. Tying and scaling as in the
        module docstring."""
        proj = hf.get("feed_forward_proj", "relu")
        if proj not in FEED_FORWARD:
            raise LlmkitError(
                f"T5 config: feed_forward_proj '{proj}' is unsupported",
                "llmkit converts 'relu' (T5 v1.0) and 'gated-gelu' (T5 v1.1, flan-T5)",
            )
        if not any(n.startswith("decoder.block.") for n in state_dict):
            raise LlmkitError(
                "T5 checkpoint: no decoder weights (a T5EncoderModel?)",
                "llmkit converts T5ForConditionalGeneration checkpoints",
            )
        mlp, activation = FEED_FORWARD[proj]
        n_layer = hf.get("num_layers", 6)
        scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings") is not False)
        pad = hf.get("pad_token_id", 0)
        start = hf.get("decoder_start_token_id")
        return ModelConfig(
            family="encoder_decoder",
            vocab_size=hf.get("vocab_size", 32128),
            d_model=hf.get("d_model", 512),
            n_layer=n_layer,
            n_decoder_layer=hf.get("num_decoder_layers") or n_layer,
            n_head=hf.get("num_heads", 8),
            head_dim=hf.get("d_kv", 64),
            d_ff=hf.get("d_ff", 2048),
            max_seq_len=hf.get("n_positions", 512),  # informational: relative positions have no limit
            pos="relative",
            norm="rmsnorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-6),
            norm_placement="pre",
            mlp=mlp,
            activation=activation,
            bias=False,
            tie_embeddings=not _distinct_lm_head(state_dict),
            scale_attn=False,
            scale_decoder_output=bool(scale),
            rel_buckets=hf.get("relative_attention_num_buckets", 32),
            rel_max_distance=hf.get("relative_attention_max_distance", 128),
            pad_token_id=pad,
            eos_token_id=first_id(hf.get("eos_token_id", 1)),
            decoder_start_token_id=pad if start is None else start,
        )

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """A config T5ForConditionalGeneration reads the same in transformers 4.x and 5.x.

        ``tie_word_embeddings`` is the truth about our head (4.x derives scaling from it, and 5.x
        keeps an ``lm_head.weight`` that differs from ``shared.weight`` untied); the explicit
        ``scale_decoder_outputs`` is what 5.x reads for scaling."""
        return {
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "vocab_size": cfg.vocab_size,
            "d_model": cfg.d_model,
            "d_kv": cfg.head_dim,
            "d_ff": cfg.d_ff,
            "num_layers": cfg.n_layer,
            "num_decoder_layers": cfg.n_decoder_layer,
            "num_heads": cfg.n_head,
            "relative_attention_num_buckets": cfg.rel_buckets,
            "relative_attention_max_distance": cfg.rel_max_distance,
            "n_positions": cfg.max_seq_len,
            "dropout_rate": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps,
            "initializer_factor": 1.0,
            "feed_forward_proj": FEED_FORWARD_TO_HF[(cfg.mlp, cfg.activation)],
            "is_encoder_decoder": True,
            "use_cache": True,
            "tie_word_embeddings": cfg.tie_embeddings,
            "scale_decoder_outputs": cfg.scale_decoder_output,
            "pad_token_id": cfg.pad_token_id,
            "eos_token_id": cfg.eos_token_id,
            "decoder_start_token_id": cfg.decoder_start_token_id,
        }

    # ---- weights --------------------------------------------------------------------------
    def state_dict_from_hf(self, sd: StateDict, cfg: ModelConfig) -> StateDict:
        """T5ForConditionalGeneration names -> ours; embed_tokens aliases and a tied lm_head are dropped."""
        sd = dict(sd)
        for name in IGNORED:
            sd.pop(name, None)
        shared = sd.pop("shared.weight", None)
        for name in ALIASES:
            alias = sd.pop(name, None)
            if shared is None:
                shared = alias
            elif alias is not None and not torch.equal(alias, shared):
                raise LlmkitError(
                    f"T5 checkpoint: '{name}' differs from shared.weight",
                    "llmkit's T5 shares one token embedding between encoder and decoder",
                )
        if shared is None:
            raise LlmkitError("T5 checkpoint: missing tensor 'shared.weight'", MISMATCH_HINT)
        lm_head = sd.pop("lm_head.weight", None)
        out = {"embed.tokens.weight": shared}
        for stack, n_layer in (("encoder", cfg.n_layer), ("decoder", cfg.n_decoder_layer)):
            out.update({ours: take(sd, theirs, FAMILY) for ours, theirs in _stack_names(stack, n_layer, cfg).items()})
        reject_leftovers(
            sd,
            FAMILY,
            (
                "llmkit converts T5ForConditionalGeneration checkpoints; check num_layers and feed_forward_proj "
                "in config.json"
            ),
        )
        if not cfg.tie_embeddings:
            if lm_head is None:
                raise LlmkitError("T5 checkpoint: missing tensor 'lm_head.weight'", MISMATCH_HINT)
            out["lm_head.weight"] = lm_head
        return out

    def state_dict_to_hf(self, sd: StateDict, cfg: ModelConfig) -> StateDict:
        """Our names -> the keys save_pretrained writes: ``shared.weight`` and the blocks, plus
        ``lm_head.weight`` for an untied head (the 4.x shape, which 5.x loads untied)."""
        out = {"shared.weight": sd["embed.tokens.weight"]}
        for stack, n_layer in (("encoder", cfg.n_layer), ("decoder", cfg.n_decoder_layer)):
            out.update({theirs: sd[ours] for ours, theirs in _stack_names(stack, n_layer, cfg).items()})
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
        return {k: v.contiguous() for k, v in out.items()}


def _stack_names(stack: str, n_layer: int, cfg: ModelConfig) -> dict[str, str]:
    """ours -> theirs for one stack: self-attention in sublayer 0, cross-attention in 1 (decoder),
    the feed-forward last; T5's wi_0 is our gate (activated), wi_1 our up."""
    names = {f"{stack}.rel_bias.embedding.weight": f"{stack}.{REL_BIAS}"}
    if cfg.mlp == "gated":
        mlp = {"gate": "wi_0", "up": "wi_1", "down": "wo"}
    else:
        mlp = {"up": "wi", "down": "wo"}
    for i in range(n_layer):
        ours, theirs = f"{stack}.layers.{i}.", f"{stack}.block.{i}.layer."
        names[ours + "attn_norm.weight"] = theirs + "0.layer_norm.weight"
        names.update({f"{ours}attn.{p}.weight": f"{theirs}0.SelfAttention.{p}.weight" for p in ATTN})
        ff = 1
        if stack == "decoder":
            names[ours + "cross_norm.weight"] = theirs + "1.layer_norm.weight"
            names.update({f"{ours}cross_attn.{p}.weight": f"{theirs}1.EncDecAttention.{p}.weight" for p in ATTN})
            ff = 2
        names[ours + "mlp_norm.weight"] = f"{theirs}{ff}.layer_norm.weight"
        names.update({f"{ours}mlp.{m}.weight": f"{theirs}{ff}.DenseReluDense.{w}.weight" for m, w in mlp.items()})
    names[f"{stack}.final_norm.weight"] = f"{stack}.final_layer_norm.weight"
    return names


def _distinct_lm_head(sd: StateDict) -> bool:
    """True when lm_head.weight is stored with values other than the shared embedding (an untied head)."""
    head = sd.get("lm_head.weight")
    shared = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    return head is not None and not (shared is not None and torch.equal(head, shared))


CONVERTER = T5Converter()
