"""llama.cpp's ``llama`` and ``qwen2`` architectures <-> llmkit's decoder: config keys and tensor names.

Both are pre-norm RMSNorm decoders with RoPE, SwiGLU and grouped-query attention; ``qwen2`` adds
biases on the q/k/v projections. llama.cpp's converter permutes the rows of Q and K (and their
biases) for ``llama``, turning Hugging Face's rotate-half RoPE layout into the interleaved pairs
ggml's rope kernel rotates; llmkit uses the rotate-half layout, so import undoes the permutation and
export redoes it. ``qwen2`` runs ggml's NeoX (rotate-half) rope and is stored unpermuted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError

ARCHITECTURES = ("llama", "qwen2")
# finetune words that name how a file was quantized or packed, not what the model is ("Instruct-AWQ")
NOT_A_FINETUNE = {"awq", "gptq", "gguf", "ggml", "exl2", "bnb", "int4", "int8", "fp16", "bf16", "f16", "f32"}
# a file stem's quantization type: "SmolLM2-135M-Instruct.Q4_1", "qwen2.5-coder-0.5b-instruct-q5_k_m"
QUANT_SUFFIX = re.compile(r"[.\-_](i?q\d\w*|f16|f32|bf16)$", re.IGNORECASE)
PERMUTED = ("llama",)  # architectures whose Q/K rows llama.cpp interleaves
# ours -> llama.cpp's, per block ("stack.layers.N." -> "blk.N.")
LAYER = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.q.weight": "attn_q.weight",
    "attn.k.weight": "attn_k.weight",
    "attn.v.weight": "attn_v.weight",
    "attn.o.weight": "attn_output.weight",
    "mlp_norm.weight": "ffn_norm.weight",
    "mlp.gate.weight": "ffn_gate.weight",
    "mlp.up.weight": "ffn_up.weight",
    "mlp.down.weight": "ffn_down.weight",
}
QKV_BIAS = {"attn.q.bias": "attn_q.bias", "attn.k.bias": "attn_k.bias", "attn.v.bias": "attn_v.bias"}
GLOBAL = {"embed.tokens.weight": "token_embd.weight", "stack.final_norm.weight": "output_norm.weight"}
HEAD = ("lm_head.weight", "output.weight")
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # llama.cpp's general.file_type (LlamaFileType)


# ---- config -------------------------------------------------------------------------------------
def check_architecture(arch: str, source: str) -> None:
    if arch not in ARCHITECTURES:
        raise LlmkitError(
            f"{source}: unsupported architecture '{arch or 'none'}'",
            f"llmkit converts GGUF architectures {', '.join(ARCHITECTURES)}",
        )


def config_from_metadata(meta: dict[str, Any], tensor_names: set[str], vocab_rows: int, source: str) -> ModelConfig:
    """A ModelConfig from ``{arch}.*`` keys; ``vocab_rows`` is token_embd's row count.

    Absent optional keys take llama.cpp's defaults (rope base 10000, head_dim = d_model // n_head).
    """
    arch = str(meta.get("general.architecture", ""))
    check_architecture(arch, source)

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise LlmkitError(f"{source}: metadata '{arch}.{name}' is missing", "the file is incomplete or corrupt")
        if isinstance(value, list):
            raise LlmkitError(f"{source}: per-layer '{arch}.{name}' is unsupported", "llmkit needs one value")
        return value

    _check_rope(meta, arch, source)
    d_model, n_head = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", d_model // n_head))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise LlmkitError(f"{source}: value_length differs from key_length", "llmkit uses one head_dim for both")
    rotated = int(key("rope.dimension_count", head_dim))
    if rotated != head_dim:
        raise LlmkitError(
            f"{source}: RoPE rotates {rotated} of {head_dim} head dimensions (partial rotary) is unsupported",
            "llmkit rotates the whole head dimension",
        )
    qkv_bias = any(f"blk.0.{b}" in tensor_names for b in QKV_BIAS.values())
    return ModelConfig(
        family="decoder",
        name=gguf_name(meta, Path(source)),
        vocab_size=int(meta.get(f"{arch}.vocab_size", vocab_rows)),
        d_model=d_model,
        n_layer=int(key("block_count")),
        n_head=n_head,
        n_kv_head=int(key("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        d_ff=int(key("feed_forward_length")),
        max_seq_len=int(key("context_length")),
        pos="rope",
        norm="rmsnorm",
        norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        mlp="gated",
        activation="silu",
        bias=False,
        qkv_bias=qkv_bias,
        tie_embeddings=HEAD[1] not in tensor_names,  # llama.cpp leaves output.weight out when tied
        rope_theta=float(key("rope.freq_base", 10000.0)),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )


def _check_rope(meta: dict[str, Any], arch: str, source: str) -> None:
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none" or float(meta.get(f"{arch}.rope.scaling.factor", 1.0)) not in (0.0, 1.0):
        raise LlmkitError(
            f"{source}: RoPE scaling '{scaling}' is unsupported", "llmkit implements plain RoPE (no scaling) only"
        )


def exportable(cfg: ModelConfig) -> str | None:
    """Why ``cfg`` has no GGUF form llmkit writes, or None when it has one (llama, or qwen2 with q/k/v biases)."""
    rules = [
        (cfg.family == "decoder", f"family '{cfg.family}' (GGUF export is for decoder-only models)"),
        (cfg.pos == "rope", f"pos '{cfg.pos}' (llama/qwen2 use RoPE)"),
        (cfg.norm == "rmsnorm" and cfg.norm_placement == "pre", f"{cfg.norm_placement}-{cfg.norm} (need pre-RMSNorm)"),
        (cfg.mlp == "gated" and cfg.activation == "silu", f"{cfg.mlp} MLP with {cfg.activation} (need SwiGLU)"),
        (not cfg.bias, "biases on every linear layer (only q/k/v biases have a GGUF form: qwen2)"),
        (cfg.scale_attn and not cfg.scale_decoder_output, "T5-style attention/output scaling"),
        (not cfg.type_vocab_size, "token-type embeddings"),
    ]
    return next((why for ok, why in rules if not ok), None)


def architecture_for(cfg: ModelConfig) -> str:
    """``qwen2`` when the model has q/k/v biases (llama.cpp's ``llama`` graph would ignore them)."""
    return "qwen2" if cfg.qkv_bias else "llama"


def metadata_from_config(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """The ``{arch}.*`` keys llama.cpp and transformers read, as (key -> value)."""
    meta = {
        "context_length": cfg.max_seq_len,
        "embedding_length": cfg.d_model,
        "block_count": cfg.n_layer,
        "feed_forward_length": cfg.d_ff,
        "attention.head_count": cfg.n_head,
        "attention.head_count_kv": cfg.n_kv_head,
        "rope.freq_base": float(cfg.rope_theta),
        "attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        "rope.dimension_count": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
    }
    if cfg.head_dim != cfg.d_model // cfg.n_head:  # llama.cpp derives it otherwise
        meta["attention.key_length"] = meta["attention.value_length"] = cfg.head_dim
    return {f"{arch}.{k}": v for k, v in meta.items()}


# ---- tensors ------------------------------------------------------------------------------------
def names(cfg: ModelConfig) -> dict[str, str]:
    """Every llmkit tensor name of ``cfg`` -> its llama.cpp name (tied head left out)."""
    out = dict(GLOBAL)
    per_layer = {**LAYER, **(QKV_BIAS if cfg.qkv_bias else {})}
    for i in range(cfg.n_layer):
        out.update({f"stack.layers.{i}.{mine}": f"blk.{i}.{theirs}" for mine, theirs in per_layer.items()})
    if not cfg.tie_embeddings:
        out[HEAD[0]] = HEAD[1]
    return out


def interleave_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rotate-half -> interleaved RoPE layout per head (llama.cpp's ``permute``): within each head,
    rows [0, D/2) and [D/2, D) become the even and odd rows."""
    d = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, d, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def half_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Interleaved -> rotate-half layout: the inverse of ``interleave_rows``."""
    d = w.shape[0] // n_head // 2
    return w.reshape(n_head, d, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _heads_for(name: str, cfg: ModelConfig) -> int | None:
    """Heads to (un)permute over for a Q or K tensor, None for the others."""
    if ".attn.q." in name:
        return cfg.n_head
    if ".attn.k." in name:
        return cfg.n_kv_head
    return None


def tensor_from_gguf(name: str, tensor: torch.Tensor, cfg: ModelConfig, arch: str) -> torch.Tensor:
    """One tensor as llama.cpp stores it -> llmkit's layout (undo the Q/K permutation for llama)."""
    heads = _heads_for(name, cfg)
    return half_rows(tensor, heads) if heads and arch in PERMUTED else tensor


def tensor_to_gguf(name: str, tensor: torch.Tensor, cfg: ModelConfig, arch: str) -> torch.Tensor:
    """One llmkit tensor -> llama.cpp's layout (permute Q/K for llama)."""
    heads = _heads_for(name, cfg)
    return interleave_rows(tensor, heads) if heads and arch in PERMUTED else tensor


def gguf_name(meta: dict[str, Any], path: Path) -> str:
    """The model's name from a GGUF file without its noise: ``general.basename``, ``general.size_label`` and
    the finetune's leading words joined with "-" (llama.cpp's file-naming convention), else the file's stem
    without its quantization type. ``general.name`` is not used: converters fill it with the training run's
    label (SmolLM2's file says "Smollm2 135M 8k Lc100K Mix1 Ep2", Qwen2.5-Coder's "... Instruct AWQ"), and so
    is the finetune, so only its alphabetic words before the first other one are kept ("Instruct" of
    "Instruct-AWQ"; nothing of "8k-lc100k-mix1-ep2")."""
    base = str(meta.get("general.basename") or "").strip()
    if not base:
        return QUANT_SUFFIX.sub("", path.stem) or path.stem
    words = []
    for word in str(meta.get("general.finetune") or "").split("-"):
        if not word.isalpha() or word.lower() in NOT_A_FINETUNE:
            break
        words.append(word)
    return "-".join([base, *([str(meta["general.size_label"])] if meta.get("general.size_label") else []), *words])
