"""llmkit: the whole life of an LLM project, from a laptop CPU to a GPU cluster.

Public API (imported lazily, so `import llmkit.config` stays free of torch):

    ModelConfig, GenerationConfig   dataclass configs (llmkit.config)
    build_model(cfg)                a model of any family (llmkit.models)
    load(dir), save(model, dir)     checkpoint directories (llmkit.checkpoint)
    Tokenizer, train_tokenizer      tokenizers (llmkit.data.tokenizer)
    generate, stream                decoding: completions, or pieces as they come (llmkit.inference)
    LlmkitError                     the one user-facing error type
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": "llmkit.config",
    "GenerationConfig": "llmkit.config",
    "PRESETS": "llmkit.config",
    "LlmkitError": "llmkit.errors",
    "build_model": "llmkit.models",
    "ModelOutput": "llmkit.models",
    "load": "llmkit.checkpoint",
    "save": "llmkit.checkpoint",
    "Tokenizer": "llmkit.data.tokenizer",
    "train_tokenizer": "llmkit.data.tokenizer_train",
    "generate": "llmkit.inference",
    "stream": "llmkit.inference",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llmkit' has no attribute '{name}'")
