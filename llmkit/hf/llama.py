"""Llama (transformers ``model_type: llama``; Mistral shares the layout, Qwen2 adds q/k/v biases: hf/qwen2.py)
<-> llmkit decoder with RoPE, RMSNorm, SwiGLU and grouped-query attention.

Hugging Face Llama checkpoints already use the rotate-half RoPE layout llmkit uses (Meta's original
files interleave pairs and need a permutation of q/k rows; those are not read here), so weights are
renamed only. ``LlamaForSequenceClassification`` (``score`` instead of ``lm_head``) maps to the
decoder's classifier head, its ``id2label`` to ModelConfig.labels.
"""

from __future__ import annotations

from typing import Any

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.hf.base import StateDict, first_id, id2label_fields, label_names, reject_leftovers, take

FAMILY = "Llama"
PREFIX = "model."  # LlamaForCausalLM; LlamaModel checkpoints have none
# ours -> theirs, per layer
LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q.weight": "self_attn.q_proj.weight",
    "attn.k.weight": "self_attn.k_proj.weight",
    "attn.v.weight": "self_attn.v_proj.weight",
    "attn.o.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
QKV_BIAS = {f"attn.{p}.bias": f"self_attn.{p}_proj.bias" for p in "qkv"}  # Qwen2 only
GLOBAL = {"embed.tokens.weight": "embed_tokens.weight", "stack.final_norm.weight": "norm.weight"}
SCORE = "score.weight"  # LlamaForSequenceClassification's head
BUFFER_SUFFIXES = (".rotary_emb.inv_freq",)  # saved by transformers < 4.32; recomputed from rope_theta
ACTIVATIONS = ("silu", "swish")  # the same function under two names


class LlamaConverter:
    model_type = "llama"
    family = FAMILY
    qkv_bias = False  # Qwen2Converter: True
    sliding_window_default = True  # MistralConfig's use_sliding_window when config.json leaves it out
    no_bias_hint = "llmkit converts LlamaForCausalLM and LlamaModel checkpoints without biases"

    def matches(self, cfg: ModelConfig) -> bool:
        return (
            cfg.family == "decoder"
            and cfg.pos == "rope"
            and cfg.norm == "rmsnorm"
            and cfg.norm_placement == "pre"
            and cfg.mlp == "gated"
            and cfg.activation == "silu"
            and not cfg.bias
            and cfg.qkv_bias == self.qkv_bias  # Qwen2's q/k/v biases have no place in LlamaForCausalLM
            and cfg.scale_attn
            and not cfg.type_vocab_size
            and not cfg.scale_decoder_output
        )

    # ---- config ---------------------------------------------------------------------------
    def config_from_hf(self, hf: dict[str, Any], state_dict: StateDict) -> ModelConfig:
        """Read a LlamaConfig dict; absent keys take LlamaConfig's defaults."""
        self.check_supported(hf)
        n_head = hf.get("num_attention_heads", 32)
        classifier = SCORE in state_dict
        return ModelConfig(
            family="decoder",
            vocab_size=hf.get("vocab_size", 32000),
            d_model=hf.get("hidden_size", 4096),
            n_layer=hf.get("num_hidden_layers", 32),
            n_head=n_head,
            n_kv_head=hf.get("num_key_value_heads") or n_head,
            head_dim=hf.get("head_dim"),  # None: derived as d_model // n_head, as transformers does
            d_ff=hf.get("intermediate_size", 11008),
            max_seq_len=_context(hf, self.sliding_window_default),
            pos="rope",
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            mlp="gated",
            activation="silu",
            bias=False,
            qkv_bias=self.qkv_bias,
            tie_embeddings=hf.get("tie_word_embeddings", False),
            rope_theta=float(_rope_parameters(hf).get("rope_theta", hf.get("rope_theta", 10000.0))),
            init_std=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id", 1),
            eos_token_id=first_id(hf.get("eos_token_id", 2)),
            pad_token_id=first_id(hf.get("pad_token_id")),
            decoder_head="classifier" if classifier else "lm",
            num_labels=state_dict[SCORE].shape[0] if classifier else 2,
            labels=label_names(hf) if classifier else [],
        )

    def check_supported(self, hf: dict[str, Any]) -> None:
        if hf.get("model_type") == "qwen2":  # same names as Llama, but q/k/v projections always carry biases
            raise LlmkitError(
                "Qwen2 config: q/k/v projection biases are unsupported", "llmkit's Llama has no linear biases"
            )
        check_llama_shape(hf, self.family)
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise LlmkitError(f"Llama config: {flag}=true is unsupported", "llmkit's Llama has no linear biases")

    def layer_map(self) -> dict[str, str]:
        """Ours -> theirs within one layer."""
        return {**LAYER, **QKV_BIAS} if self.qkv_bias else LAYER

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """A config LlamaForCausalLM.from_pretrained reads: RoPE as 5.x ``rope_parameters`` and, for
        transformers 4.x, the same theta as top-level ``rope_theta``."""
        classifier = cfg.decoder_head == "classifier"
        return {
            "architectures": [f"{self.family}ForSequenceClassification" if classifier else f"{self.family}ForCausalLM"],
            "model_type": self.model_type,
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head,
            "head_dim": cfg.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps,
            "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
            "rope_theta": cfg.rope_theta,
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": cfg.dropout,
            "initializer_range": cfg.init_std,
            "tie_word_embeddings": cfg.tie_embeddings,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
            **(id2label_fields(cfg) if classifier else {}),
        }

    # ---- weights --------------------------------------------------------------------------
    def state_dict_from_hf(self, sd: StateDict, cfg: ModelConfig) -> StateDict:
        """LlamaForCausalLM (``model.`` prefix) or LlamaModel (no prefix) names -> ours."""
        base = {n.removeprefix(PREFIX): t for n, t in sd.items() if not n.endswith(BUFFER_SUFFIXES)}
        lm_head = base.pop("lm_head.weight", None)
        score = base.pop(SCORE, None)
        out = {mine: take(base, hf, self.family) for mine, hf in GLOBAL.items()}
        for i in range(cfg.n_layer):
            layer = {
                f"stack.layers.{i}.{mine}": take(base, f"layers.{i}.{hf}", self.family)
                for mine, hf in self.layer_map().items()
            }
            out.update(layer)
        reject_leftovers(base, self.family, f"{self.no_bias_hint}; check num_hidden_layers in config.json")
        # a tied head is the embedding itself: some files store it anyway, keep one copy
        if cfg.decoder_head == "classifier":
            out[SCORE] = score
        elif lm_head is not None and not cfg.tie_embeddings:
            out["lm_head.weight"] = lm_head
        return out

    def state_dict_to_hf(self, sd: StateDict, cfg: ModelConfig) -> StateDict:
        """Our names -> exactly the keys LlamaForCausalLM.save_pretrained writes (no lm_head when tied)."""
        out = {PREFIX + hf: sd[mine] for mine, hf in GLOBAL.items()}
        for i in range(cfg.n_layer):
            out.update(
                {f"{PREFIX}layers.{i}.{hf}": sd[f"stack.layers.{i}.{mine}"] for mine, hf in self.layer_map().items()}
            )
        if cfg.decoder_head == "classifier":
            out[SCORE] = sd[SCORE]
        elif not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
        return out


def _context(hf: dict[str, Any], sliding_default: bool = True) -> int:
    """max_position_embeddings, capped by Mistral's (or Qwen2's, where switched on) sliding window: within
    the window, windowed attention is plain causal attention, so the converted model is exact up to that length."""
    n = hf.get("max_position_embeddings", 2048)
    window = hf.get("sliding_window") if hf.get("use_sliding_window", sliding_default) else None
    return min(n, window) if window else n


def _rope_parameters(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings as transformers 5.x reads them: old ``rope_scaling`` wins over ``rope_parameters``."""
    return hf.get("rope_scaling") or hf.get("rope_parameters") or {}


def check_llama_shape(hf: dict[str, Any], family: str = FAMILY) -> None:
    """What Llama-shaped families (Llama, Mistral, Qwen2) must not use: scaled or partial RoPE, another activation."""
    rope = _rope_parameters(hf)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise LlmkitError(
            f"{family} config: rope type '{rope_type}' is unsupported",
            "llmkit implements plain RoPE (rope_type 'default') only",
        )
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise LlmkitError(
            f"{family} config: partial_rotary_factor={partial} is unsupported",
            "llmkit rotates the whole head dimension",
        )
    act = hf.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise LlmkitError(f"{family} config: hidden_act '{act}' is unsupported", "llmkit's Llama uses SiLU (SwiGLU)")


CONVERTER = LlamaConverter()
