"""Module paths, llmkit <-> transformers: where each of our linear layers lives in the HF model.

Adapters (peft's LoRA) name the modules they wrap by their path in the transformers model, so an
llmkit adapter needs the HF path of every linear layer it targets. The family converters already
know it: a weight that is renamed only (not transposed, split or concatenated) comes back from
``state_dict_to_hf`` as the same tensor under its HF name. Running the converter once over a model
built on the meta device (no memory) and matching tensors by identity gives the map without a second
copy of every family's names. Weights that are reshaped (GPT-2's Conv1D layers, its fused ``c_attn``)
have no one-to-one module and are left out.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from llmkit.config import ModelConfig
from llmkit.hf.convert import converter_for_config
from llmkit.models import build_model

WEIGHT = ".weight"


def parameter_map(cfg: ModelConfig) -> dict[str, str]:
    """llmkit name -> transformers name of every tensor that converts by renaming only.

    The HF name is the key ``llmkit convert --to-hf`` writes for ``cfg`` (the class for its head, e.g.
    ``model.layers.0.self_attn.q_proj.weight`` in LlamaForCausalLM, ``classifier.bias`` in
    BertForSequenceClassification). Qwen2 (q/k/v biases) shares Llama's names; its biases are left out.
    """
    conv_cfg = dataclasses.replace(cfg, qkv_bias=False) if cfg.qkv_bias else cfg
    conv = converter_for_config(conv_cfg)
    model = build_model(cfg, device="meta", init=False)
    sd = model.state_dict()  # one tensor object per name: identity survives a rename
    hf_name = {id(t): name for name, t in conv.state_dict_to_hf(sd, conv_cfg).items()}
    return {name: hf_name[id(t)] for name, t in sd.items() if id(t) in hf_name}


def linear_module_map(cfg: ModelConfig) -> dict[str, str]:
    """llmkit path -> transformers path of every ``nn.Linear`` whose weight converts by renaming only
    (e.g. ``stack.layers.0.attn.q`` -> ``model.layers.0.self_attn.q_proj``)."""
    params = parameter_map(cfg)
    model = build_model(cfg, device="meta", init=False)
    return {
        path: params[path + WEIGHT].removesuffix(WEIGHT)
        for path, module in model.named_modules()
        if isinstance(module, nn.Linear) and path + WEIGHT in params
    }
