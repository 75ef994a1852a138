"""Hugging Face interop: ``from_hf`` / ``to_hf`` convert checkpoint directories (GPT-2, Llama, Qwen2, BERT, T5).

Family maps live in one module each (gpt2, llama, qwen2, bert, t5); ``convert`` ties them together.
Imports are lazy so one family's module can be used on its own.
"""

from __future__ import annotations

from typing import Any

__all__ = ["from_hf", "to_hf", "load_hf_state_dict", "converter_for_config", "CONVERTERS"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from llmkit.hf import convert

        return getattr(convert, name)
    raise AttributeError(name)
