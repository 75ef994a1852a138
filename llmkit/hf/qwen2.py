"""Qwen2 (transformers ``model_type: qwen2``; Qwen2.5 too) <-> llmkit decoder: Llama's layout and names with
biases on the q/k/v projections (none on o_proj or the MLP), which llmkit's ``qkv_bias`` switch builds.

Qwen2Config leaves ``use_sliding_window`` off by default (Mistral's is on); where a config switches it
on, the context is capped at the window, as for Mistral, so the converted model stays exact.
"""

from __future__ import annotations

from typing import Any

from llmkit.config import ModelConfig
from llmkit.hf.llama import LlamaConverter, check_llama_shape


class Qwen2Converter(LlamaConverter):
    model_type = "qwen2"
    family = "Qwen2"
    qkv_bias = True
    sliding_window_default = False
    no_bias_hint = "llmkit converts Qwen2ForCausalLM and Qwen2Model checkpoints (biases on q/k/v only)"

    def check_supported(self, hf: dict[str, Any]) -> None:
        check_llama_shape(hf, self.family)

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """A config Qwen2ForCausalLM.from_pretrained reads (no attention_bias/mlp_bias keys: Qwen2 has fixed biases)."""
        out = {k: v for k, v in super().config_to_hf(cfg).items() if k not in ("attention_bias", "mlp_bias")}
        return {**out, "use_sliding_window": False}


CONVERTER = Qwen2Converter()
