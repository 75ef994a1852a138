"""Models by name from the Hugging Face Hub: `llmkit models get ORG/NAME[@REVISION]` (docs/models.md).

names.py says which files a repository needs (stdlib); download.py fetches them through
``huggingface_hub`` and its cache and checks each against the Hub's sizes and hashes; pull.py converts
them with llmkit.hf or llmkit.gguf. Imports are lazy: ``huggingface_hub`` loads only on this path.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get", "GetResult", "is_hub_name", "parse"]


def __getattr__(name: str) -> Any:
    if name in ("get", "GetResult"):
        from llmkit.hub import pull as module

        return getattr(module, name)
    if name in ("is_hub_name", "parse"):
        from llmkit.hub import names

        return getattr(names, name)
    raise AttributeError(name)
