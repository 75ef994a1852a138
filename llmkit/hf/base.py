"""What a family converter provides: config and state-dict maps to and from transformers layouts."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError

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


# ---- helpers the family maps share ----------------------------------------------------------
MISMATCH_HINT = "config.json and the weights do not belong together; re-download the checkpoint"


def first_id(ids: int | list[int] | None) -> int | None:
    """The first of several token ids (Llama 3 lists several eos ids), or the one id."""
    if isinstance(ids, list):
        return ids[0] if ids else None
    return ids


def take(sd: StateDict, name: str, family: str) -> torch.Tensor:
    """Pop ``name`` (so leftovers can be reported as unexpected), or say which tensor is missing."""
    if name not in sd:
        raise LlmkitError(f"{family} checkpoint: missing tensor '{name}'", MISMATCH_HINT)
    return sd.pop(name)


def reject_leftovers(sd: StateDict, family: str, hint: str) -> None:
    """After every expected tensor was taken, anything left means config and weights disagree."""
    if sd:
        raise LlmkitError(f"{family} checkpoint: unexpected tensor '{sorted(sd)[0]}' ({len(sd)} unexpected)", hint)


def label_names(hf: dict[str, Any]) -> list[str]:
    """Class names by id from config.json's ``id2label``; [] when absent or transformers' LABEL_i
    placeholders (llmkit then shows LABEL_i itself)."""
    id2label = hf.get("id2label") or {}
    names = [str(id2label[key]) for key in sorted(id2label, key=int)]
    return [] if names == [f"LABEL_{i}" for i in range(len(names))] else names


def id2label_fields(cfg: ModelConfig) -> dict[str, Any]:
    """config.json's ``num_labels``, ``id2label`` and ``label2id`` for a classification head."""
    names = cfg.label_names()
    return {
        "num_labels": cfg.num_labels,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }
