"""LoraConfig: rank, alpha, dropout and the modules to adapt, checked against a model.

Target names follow peft's rule: a target matches a linear layer whose full name equals it or ends
with ``"." + target``. llmkit names the linear layers of every family alike:

- attention: ``attn.q``, ``attn.k``, ``attn.v``, ``attn.o``; T5's decoder adds ``cross_attn.q/k/v/o``
  (``q`` alone matches both);
- MLP: ``mlp.up``, ``mlp.down``, and ``mlp.gate`` in gated MLPs (Llama, Qwen2, T5 v1.1);
- heads: ``lm_head`` (untied), ``pooler.dense``, ``classifier``, ``mlm_head.dense``.

A model that converts to transformers also takes the HF names of the same layers, as peft users
write them: Llama/Qwen2 ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``; BERT ``query key
value`` (``attention.output.dense``, ``intermediate.dense``, ``output.dense`` for the rest); T5 ``q k v
o wi wi_0 wi_1 wo``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from llmkit.errors import LlmkitError

BIAS = ("none",)  # peft also trains biases ("all", "lora_only"); llmkit's adapters hold A and B only
DEFAULT_TARGETS = ("attn.q", "attn.v")  # as the LoRA paper (sec. 7.1) and peft's defaults for most models


@dataclass
class LoraConfig:
    """A LoRA adapter: ``W x + (alpha / rank) * B A dropout(x)`` on every targeted linear layer.

    ``modules_to_save``: modules trained in full next to the adapter (a new classification head),
    saved with it as peft saves them. ``use_rslora``: scale by alpha / sqrt(rank) (Kalajdzievski 2023).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    bias: str = "none"
    modules_to_save: list[str] = field(default_factory=list)
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        self.target_modules = list(self.target_modules)
        self.modules_to_save = list(self.modules_to_save or [])
        if not isinstance(self.rank, int) or self.rank < 1:
            raise LlmkitError(f"LoRA rank={self.rank} must be a positive integer", "set --lora.rank to e.g. 8")
        if self.alpha <= 0:
            raise LlmkitError(f"LoRA alpha={self.alpha} must be positive", "set --lora.alpha to e.g. 2 * rank")
        if not 0.0 <= self.dropout < 1.0:
            raise LlmkitError(f"LoRA dropout={self.dropout} must be in [0, 1)", "set --lora.dropout to e.g. 0.05")
        if self.bias not in BIAS:
            raise LlmkitError(f"LoRA bias='{self.bias}' is unsupported", "llmkit trains A and B only: bias='none'")
        if not self.target_modules:
            raise LlmkitError("LoRA target_modules is empty", f"name linear layers, e.g. {list(DEFAULT_TARGETS)}")

    @property
    def scaling(self) -> float:
        """The factor on B A x: alpha / rank, or alpha / sqrt(rank) with rsLoRA."""
        return self.alpha / (self.rank**0.5 if self.use_rslora else self.rank)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": list(self.target_modules),
            "bias": self.bias,
            "modules_to_save": list(self.modules_to_save),
            "use_rslora": self.use_rslora,
        }

    def resolve(self, model: nn.Module) -> list[str]:
        """Full names of the linear layers the targets select (HF names mapped first); checked as ``validate``."""
        from llmkit.lora.targets import resolve_targets

        return resolve_targets(model, self.target_modules, self.rank)

    def validate(self, model: nn.Module) -> None:
        """Raise a one-line LlmkitError for a target that names no linear layer of ``model`` (listing
        the names it has) or a rank above min(in, out) of a targeted layer (naming the layer)."""
        self.resolve(model)
