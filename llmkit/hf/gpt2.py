"""GPT-2 (transformers ``model_type: gpt2``) <-> llmkit decoder with learned positions and LayerNorm.

GPT-2's ``c_attn``, ``c_proj`` and ``c_fc`` are ``Conv1D`` layers that store weights (in, out): they
are transposed for ``nn.Linear``. ``c_attn`` packs q | k | v along its output dimension.
"""

from __future__ import annotations

from typing import Any

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.hf.base import StateDict, first_id, reject_leftovers, take

FAMILY = "GPT-2"
PREFIX = "transformer."  # GPT2LMHeadModel; GPT2Model and the hub's `gpt2` checkpoint have none
# Causal-mask buffers that checkpoints written by transformers < 4.27 carry: not parameters
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# tanh-approximated GELU: gelu_new is GPT-2's own formula, gelu_pytorch_tanh torch's kernel of it
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
# ours -> theirs, per layer, for tensors that are renamed only (LayerNorm) or renamed and transposed
NORMS = {"attn_norm": "ln_1", "mlp_norm": "ln_2"}
CONV1D = {"attn.o": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}


class GPT2Converter:
    model_type = "gpt2"

    def matches(self, cfg: ModelConfig) -> bool:
        return (
            cfg.family == "decoder"
            and cfg.pos == "learned"
            and cfg.norm == "layernorm"
            and cfg.norm_placement == "pre"
            and cfg.mlp == "standard"
            and cfg.activation == "gelu_tanh"
            and cfg.bias
            # GPT-2 has one K/V head per query head and head_dim = d_model / n_head
            and cfg.n_kv_head == cfg.n_head
            and cfg.head_dim * cfg.n_head == cfg.d_model
            and not cfg.type_vocab_size
            and not cfg.scale_decoder_output
        )

    # ---- config ---------------------------------------------------------------------------
    def config_from_hf(self, hf: dict[str, Any], state_dict: StateDict) -> ModelConfig:
        """Read a GPT2Config dict; absent keys take GPT2Config's defaults (old hub files omit many)."""
        _check_supported(hf)
        d_model = hf.get("n_embd", 768)
        return ModelConfig(
            family="decoder",
            vocab_size=hf.get("vocab_size", 50257),
            d_model=d_model,
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            d_ff=hf.get("n_inner") or 4 * d_model,
            max_seq_len=hf.get("n_positions", hf.get("n_ctx", 1024)),
            pos="learned",
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            mlp="standard",
            activation="gelu_tanh",
            bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            scale_attn=hf.get("scale_attn_weights", True),
            init_std=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id", 50256),
            eos_token_id=first_id(hf.get("eos_token_id", 50256)),
            pad_token_id=hf.get("pad_token_id"),
        )

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """A config GPT2LMHeadModel.from_pretrained reads; dropout probabilities take cfg.dropout."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": None if cfg.d_ff == 4 * cfg.d_model else cfg.d_ff,
            "n_positions": cfg.max_seq_len,
            "n_ctx": cfg.max_seq_len,  # read by transformers < 4 as the context size
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps,
            "scale_attn_weights": cfg.scale_attn,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "add_cross_attention": False,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "initializer_range": cfg.init_std,
            "tie_word_embeddings": cfg.tie_embeddings,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
        }

    # ---- weights --------------------------------------------------------------------------
    def state_dict_from_hf(self, sd: StateDict, cfg: ModelConfig) -> StateDict:
        """GPT2LMHeadModel (``transformer.`` prefix) or GPT2Model / hub (no prefix) names -> ours."""
        base, lm_head = _split_base(sd)
        out = {
            "embed.tokens.weight": take(base, "wte.weight", FAMILY),
            "embed.positions.weight": take(base, "wpe.weight", FAMILY),
            "stack.final_norm.weight": take(base, "ln_f.weight", FAMILY),
            "stack.final_norm.bias": take(base, "ln_f.bias", FAMILY),
        }
        for i in range(cfg.n_layer):
            out.update(_layer_from_hf(base, i, cfg.d_model))
        reject_leftovers(
            base, FAMILY, ("llmkit converts GPT2LMHeadModel and GPT2Model checkpoints; check n_layer in config.json")
        )
        # a tied head is the embedding itself (old .bin files saved it twice): keep one copy
        if lm_head is not None and not cfg.tie_embeddings:
            out["lm_head.weight"] = lm_head
        return out

    def state_dict_to_hf(self, sd: StateDict, cfg: ModelConfig) -> StateDict:
        """Our names -> exactly the keys GPT2LMHeadModel.save_pretrained writes."""
        out = {
            "transformer.wte.weight": sd["embed.tokens.weight"],
            "transformer.wpe.weight": sd["embed.positions.weight"],
            "transformer.ln_f.weight": sd["stack.final_norm.weight"],
            "transformer.ln_f.bias": sd["stack.final_norm.bias"],
        }
        for i in range(cfg.n_layer):
            out.update(_layer_to_hf(sd, i))
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
        return out


def _check_supported(hf: dict[str, Any]) -> None:
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise LlmkitError(
            f"GPT-2 config: activation_function '{act}' is unsupported",
            f"llmkit's GPT-2 uses the tanh GELU ({' or '.join(ACTIVATIONS)})",
        )
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise LlmkitError(
            "GPT-2 config: scale_attn_by_inverse_layer_idx=true is unsupported",
            "llmkit scales every layer's scores by 1/sqrt(head_dim) only",
        )
    if hf.get("add_cross_attention"):
        raise LlmkitError(
            "GPT-2 config: add_cross_attention=true is unsupported", "llmkit converts decoder-only GPT-2 checkpoints"
        )


def _split_base(sd: StateDict) -> tuple[StateDict, torch.Tensor | None]:
    """(base-model tensors without prefix or buffers, lm_head.weight or None)."""
    base = {}
    for name, tensor in sd.items():
        if name == "lm_head.weight" or name.endswith(BUFFER_SUFFIXES):
            continue
        base[name.removeprefix(PREFIX)] = tensor
    return base, sd.get("lm_head.weight")


def _layer_from_hf(base: StateDict, i: int, d_model: int) -> StateDict:
    theirs, ours = f"h.{i}.", f"stack.layers.{i}."
    out = {}
    # c_attn: weight (C, 3C) and bias (3C,) hold q | k | v side by side
    qkv_w = take(base, theirs + "attn.c_attn.weight", FAMILY).t()  # (3C, C)
    qkv_b = take(base, theirs + "attn.c_attn.bias", FAMILY)
    for name, w, b in zip("qkv", qkv_w.split(d_model, dim=0), qkv_b.split(d_model), strict=True):
        out[f"{ours}attn.{name}.weight"] = w.contiguous()
        out[f"{ours}attn.{name}.bias"] = b.contiguous()
    for mine, hf in CONV1D.items():
        out[f"{ours}{mine}.weight"] = take(base, f"{theirs}{hf}.weight", FAMILY).t().contiguous()
        out[f"{ours}{mine}.bias"] = take(base, f"{theirs}{hf}.bias", FAMILY)
    for mine, hf in NORMS.items():
        for p in ("weight", "bias"):
            out[f"{ours}{mine}.{p}"] = take(base, f"{theirs}{hf}.{p}", FAMILY)
    return out


def _layer_to_hf(sd: StateDict, i: int) -> StateDict:
    ours, theirs = f"stack.layers.{i}.", f"transformer.h.{i}."
    out = {
        f"{theirs}attn.c_attn.weight": torch.cat([sd[f"{ours}attn.{n}.weight"] for n in "qkv"], dim=0).t(),
        f"{theirs}attn.c_attn.bias": torch.cat([sd[f"{ours}attn.{n}.bias"] for n in "qkv"]),
    }
    for mine, hf in CONV1D.items():
        out[f"{theirs}{hf}.weight"] = sd[f"{ours}{mine}.weight"].t()
        out[f"{theirs}{hf}.bias"] = sd[f"{ours}{mine}.bias"]
    for mine, hf in NORMS.items():
        for p in ("weight", "bias"):
            out[f"{theirs}{hf}.{p}"] = sd[f"{ours}{mine}.{p}"]
    return {k: v.contiguous() for k, v in out.items()}


CONVERTER = GPT2Converter()
