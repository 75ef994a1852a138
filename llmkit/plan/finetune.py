"""Fine-tuning in the plan: full, LoRA, or LoRA over an int8/int4 base (QLoRA-style).

Closed forms of a ModelConfig, standard library only: the linear layers a LoRA target selects (names
as llmkit builds them, peft's suffix rule), the adapter's parameters (rank x (in + out) per layer,
equal to the built model's, tests/test_plan.py), and the bytes of the frozen base in its precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError

METHODS = ("full", "lora", "qlora")
QUANT = ("int8", "int4")
GROUP_SIZES = (32, 64, 128)  # llmkit.quantize.spec's int4 group sizes
DEFAULT_TARGETS = ("attn.q", "attn.v")  # llmkit.lora's default
# peft's (Hugging Face) short names of the same layers, for plans written with them; llmkit.lora maps
# every HF module path through the family converters, the plan (no torch) knows these by name
HF_ALIASES = {
    "q_proj": "attn.q", "k_proj": "attn.k", "v_proj": "attn.v", "o_proj": "attn.o",
    "gate_proj": "mlp.gate", "up_proj": "mlp.up", "down_proj": "mlp.down",
    "query": "attn.q", "key": "attn.k", "value": "attn.v",
    "wi_0": "mlp.gate", "wi_1": "mlp.up", "wi": "mlp.up", "wo": "mlp.down",
}  # fmt: skip


@dataclass(frozen=True)
class Finetune:
    """How a model is fine-tuned. ``method``: full (every parameter), lora (frozen base in 16 bits
    under autocast, fp32 adapters, as peft keeps them), qlora (frozen base quantized to ``quant``,
    embeddings too, norms and biases in 16 bits). ``targets``: llmkit names of the adapted layers."""

    method: str = "full"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS)
    quant: str = "int4"
    group_size: int = 64

    def check(self) -> None:
        if self.method not in METHODS:
            raise LlmkitError(f"--finetune {self.method} is not valid", f"choose one of: {', '.join(METHODS)}")
        if self.rank < 1:
            raise LlmkitError(f"--lora {self.rank}: the rank must be >= 1", "e.g. --lora 8")
        if self.quant not in QUANT:
            raise LlmkitError(f"--quant {self.quant} is not valid", f"choose one of: {', '.join(QUANT)}")
        if self.group_size not in GROUP_SIZES:
            raise LlmkitError(f"group size {self.group_size} is not supported", f"choose from {GROUP_SIZES}")

    @property
    def adapted(self) -> bool:
        return self.method != "full"


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """Full name -> (in, out) of every linear layer the built model has, heads included."""
    d, q, kv, ff = cfg.d_model, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.d_ff
    attn = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d)}
    mlp = {"up": (d, ff), **({"gate": (d, ff)} if cfg.mlp == "gated" else {}), "down": (ff, d)}
    out: dict[str, tuple[int, int]] = {}
    names = ["stack"] if cfg.family != "encoder_decoder" else ["encoder", "decoder"]
    for stack, (layers, cross) in zip(names, _stacks(cfg), strict=True):
        for i in range(layers):
            prefix = f"{stack}.layers.{i}."
            out.update({f"{prefix}attn.{k}": s for k, s in attn.items()})
            if cross:
                out.update({f"{prefix}cross_attn.{k}": s for k, s in attn.items()})
            out.update({f"{prefix}mlp.{k}": s for k, s in mlp.items()})
    if cfg.family != "encoder":
        out["lm_head"] = (d, cfg.vocab_size)
        return out
    if cfg.pooler or cfg.encoder_head == "classifier":
        out["pooler.dense"] = (d, d)
    if cfg.encoder_head == "mlm":
        out["mlm_head.dense"] = (d, d)
        out["mlm_head.decoder"] = (d, cfg.vocab_size)
    if cfg.encoder_head == "classifier":
        out["classifier"] = (d, cfg.num_labels)
    return out


def _stacks(cfg: ModelConfig) -> list[tuple[int, bool]]:
    from llmkit.plan.parameters import stacks

    return stacks(cfg)


def lora_targets(cfg: ModelConfig, ft: Finetune) -> dict[str, tuple[int, int]]:
    """The layers ``ft.targets`` select (a name, or its dotted suffix), checked as llmkit.lora checks them."""
    layers = linear_shapes(cfg)
    chosen: set[str] = set()
    for target in ft.targets:
        name = HF_ALIASES.get(target, target)
        found = {n for n in layers if n == name or n.endswith("." + name)}
        if not found:
            raise LlmkitError(
                f"LoRA target module '{target}' matches no linear layer of the {cfg.family} model",
                "name layers as llmkit does (attn.q attn.k attn.v attn.o mlp.up mlp.gate mlp.down, cross_attn.* in "
                "T5, lm_head, classifier) or as peft does (q_proj, query, ...)",
            )
        chosen |= found
    for name in chosen:
        n_in, n_out = layers[name]
        if ft.rank > min(n_in, n_out):
            raise LlmkitError(
                f"LoRA rank {ft.rank} is larger than layer '{name}' allows (in={n_in}, out={n_out})",
                f"set the rank to {min(n_in, n_out)} or less, or leave that layer out of the targets",
            )
    return {n: s for n, s in layers.items() if n in chosen}


def lora_parameters(cfg: ModelConfig, ft: Finetune) -> int:
    """Parameters of the adapter: rank x (in + out) per adapted layer (A is rank x in, B out x rank)."""
    return sum(ft.rank * (n_in + n_out) for n_in, n_out in lora_targets(cfg, ft).values())


def quantized_matrices(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(rows, columns) of every matrix ``quantize_model`` quantizes: the linear layers and the token
    embedding table (a head tied to it shares it: counted once)."""
    out = {n: (o, i) for n, (i, o) in linear_shapes(cfg).items()}
    if cfg.tie_embeddings:
        out.pop("lm_head", None)
        out.pop("mlm_head.decoder", None)
    out["embed.tokens"] = (cfg.vocab_size, cfg.d_model)
    return out


def quantized_bytes(rows: int, cols: int, quant: str, group_size: int, scale_bytes: int) -> float:
    """Bytes of one quantized matrix: int8 one byte a weight + a scale per row; int4 two weights a
    byte (rows x ceil(cols / 2)) + a scale per group of ``group_size`` in a row."""
    if quant == "int8":
        return rows * cols + rows * scale_bytes
    return rows * math.ceil(cols / 2) + rows * math.ceil(cols / group_size) * scale_bytes


def frozen_weight_bytes(cfg: ModelConfig, parameters: int, ft: Finetune, float_bytes: int) -> float:
    """Bytes of the frozen base: every parameter at ``float_bytes`` (lora), or (qlora) the quantized
    matrices in their stored format with their scales at ``float_bytes``, the rest in float."""
    if ft.method != "qlora":
        return parameters * float_bytes
    matrices = quantized_matrices(cfg)
    in_float = parameters - sum(r * c for r, c in matrices.values())
    stored = sum(quantized_bytes(r, c, ft.quant, ft.group_size, float_bytes) for r, c in matrices.values())
    return stored + in_float * float_bytes
