"""What a family converter provides: config and state-dict maps to and from transformers layouts."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from llmkit.config import ModelConfig

StateDict = dict[str, torch.Tensor]


class FamilyConverter(Protocol):
    """One Hugging Face ``model_type`` (gpt2, llama, bert, t5) <-> llmkit.

    ``state_dict_from_hf`` receives every tensor of the checkpoint (with or without a base-model
    prefix such as ``transformer.`` or ``bert.``) and returns llmkit names; tied aliases may be
    left out. ``state_dict_to_hf`` gets llmkit tensors (tied aliases removed) and returns the
    names ``save_pretrained`` writes, so transformers loads them without warnings.
    """

    model_type: str

    def matches(self, cfg: ModelConfig) -> bool: ...

    def config_from_hf(self, hf: dict[str, Any], state_dict: StateDict) -> ModelConfig: ...

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]: ...

    def state_dict_from_hf(self, sd: StateDict, cfg: ModelConfig) -> StateDict: ...

    def state_dict_to_hf(self, sd: StateDict, cfg: ModelConfig) -> StateDict: ...
