"""Run configs: a TOML file with [model] and [train] tables -> (ModelConfig, TrainConfig), with overrides.

What `llmkit pretrain --config` trains and what `llmkit plan FILE.toml` plans. Layer L1: the data's
tokenizer (read only when the [train] data directory has one) supplies vocab_size and special ids.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmkit.config import PRESETS, ModelConfig, TrainConfig
from llmkit.config_tables import from_table, read_tables
from llmkit.errors import LlmkitError

TABLES = ("model", "train")


def load_run_config(
    path: str | os.PathLike, model_flags: dict[str, Any] | None = None, train_flags: dict[str, Any] | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """The run's configs from a TOML file and flag overrides.

    Order: read the file -> TrainConfig from [train] + flags -> the model: defaults < [model] preset
    < the data's tokenizer (vocab_size, pad/bos/eos ids, T5's decoder start = pad) < [model] fields
    < flags. A missing file, bad TOML, an unknown table or key, or a value of the wrong type raises
    an LlmkitError.
    """
    return run_config_from_tables(read_run_tables(path), path, model_flags, train_flags)


def run_config_from_tables(
    tables: dict[str, Any],
    path: str | os.PathLike,
    model_flags: dict[str, Any] | None = None,
    train_flags: dict[str, Any] | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """``load_run_config`` on tables already read (``llmkit scale sweep`` reads a [sweep] table beside them)."""
    model_table, train_table = dict(tables.get("model", {})), dict(tables.get("train", {}))
    train_cfg = from_table(TrainConfig, {**train_table, **(train_flags or {})}, f"{path} [train]", "train")
    preset = model_table.pop("preset", None)
    overrides = {**model_table, **(model_flags or {})}
    if train_cfg.data and (Path(train_cfg.data) / "tokenizer.json").is_file():
        from llmkit.data.tokenizer import Tokenizer

        for key, value in tokenizer_fields(Tokenizer.from_dir(train_cfg.data), preset, overrides).items():
            overrides.setdefault(key, value)
    if preset is None:
        return from_table(ModelConfig, overrides, f"{path} [model]", "model"), train_cfg
    if not isinstance(preset, str):
        raise LlmkitError(f"{path}: [model] preset must be a string, got {preset!r}", 'e.g. preset = "tiny-gpt-1m"')
    try:
        return ModelConfig.from_name(preset, **overrides), train_cfg
    except TypeError as err:
        raise LlmkitError(f"{path} [model]: a value has the wrong type ({err})", "check the [model] table") from None


def tokenizer_fields(tokenizer, preset: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """vocab_size and special ids a model takes from its tokenizer, as `llmkit init --tokenizer` does."""
    out: dict[str, Any] = {"vocab_size": tokenizer.vocab_size}
    for role in ("pad", "bos", "eos"):
        token_id = getattr(tokenizer, f"{role}_token_id")
        if token_id is not None:
            out[f"{role}_token_id"] = token_id
    family = overrides.get("family") or (PRESETS.get(preset, {}).get("family") if preset else "decoder")
    if family == "encoder_decoder" and tokenizer.pad_token_id is not None:
        out["decoder_start_token_id"] = tokenizer.pad_token_id  # T5 starts decoding from pad
    return out


def read_run_tables(path: str | os.PathLike, allowed: tuple[str, ...] = TABLES) -> dict[str, Any]:
    """The tables of a run config; only [model] and [train] are allowed (or the ``allowed`` ones)."""
    return read_tables(path, allowed, "configs/")
