"""LoRA adapters (Hu et al. 2021) for llmkit models, in peft's file format.

config        LoraConfig: rank, alpha, dropout, target modules (llmkit or HF names), checked against a model
targets       which linear layers the target names select
layers        LoraLinear (over nn.Linear or an int8/int4 QuantizedLinear), apply_lora, merge_lora, lora_state_dict
peft_format   save_adapter / load_adapter: adapter_config.json + adapter_model.safetensors with peft's keys
merge         merge_checkpoint: base checkpoint + adapter -> plain checkpoint (`llmkit lora merge`)
"""

from __future__ import annotations

from llmkit.lora.config import LoraConfig
from llmkit.lora.layers import LoraLinear, apply_lora, lora_layers, lora_state_dict, merge_lora, trainable_parameters
from llmkit.lora.peft_format import load_adapter, read_adapter_config, save_adapter

__all__ = [
    "LoraConfig",
    "LoraLinear",
    "apply_lora",
    "load_adapter",
    "lora_layers",
    "lora_state_dict",
    "merge_lora",
    "read_adapter_config",
    "save_adapter",
    "trainable_parameters",
]
