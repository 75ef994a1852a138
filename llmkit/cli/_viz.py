"""What the picture commands (tokenize, embeddings, attention, generate --plot) share: loading and naming."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError

NO_TOKENIZER_HINT = "save the model with its tokenizer (llmkit init PRESET OUT --tokenizer DIR)"


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="cpu", help="where the model runs: cpu (default; one forward pass is quick), cuda, ..."
    )


def model_name(path: str) -> str:
    """The name for titles: the one the checkpoint carries (llmkit.inference.loading.model_name)."""
    from llmkit.inference.loading import model_name as recorded_name

    return recorded_name(path)


def load_model(path: str, device: str = "cpu", verify: bool = True) -> Any:
    """An llmkit checkpoint in fp32 with its tokenizer; a checkpoint without one is an error."""
    from llmkit import checkpoint

    model = checkpoint.load(path, device=device, verify=verify)
    if model.tokenizer is None:
        raise LlmkitError(f"{path} has no tokenizer.json, so text cannot be turned into tokens", NO_TOKENIZER_HINT)
    return model


def load_tokenizer(path: str) -> tuple[Any, Any]:
    """(Tokenizer, ModelConfig or None) from an llmkit checkpoint directory or a tokenizer directory."""
    from llmkit import checkpoint
    from llmkit.data.tokenizer import Tokenizer

    directory = Path(path)
    if directory.is_file() and directory.name == "tokenizer.json":  # the file means its folder
        directory = directory.parent
    if not directory.is_dir():
        raise LlmkitError(f"{path}: no such directory", "pass a checkpoint directory or a tokenizer directory")
    if (directory / checkpoint.CONFIG).is_file() and (directory / checkpoint.WEIGHTS).is_file():
        cfg = checkpoint.load_config(directory)
        tokenizer = checkpoint.load_tokenizer(directory, cfg)
        if tokenizer is None:
            raise LlmkitError(f"{path} is a model without tokenizer.json", NO_TOKENIZER_HINT)
        return tokenizer, cfg
    return Tokenizer.from_hf_dir(directory), None


def tokenizer_kind(tokenizer: Any) -> str:
    """``byte-level BPE``, ``WordPiece``, ``Unigram`` or the model type `tokenizers` reports."""
    return "byte-level BPE" if tokenizer.is_byte_level else type(tokenizer.backend.model).__name__
