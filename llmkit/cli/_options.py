"""Shared CLI options: `--model.FIELD VALUE` overrides for every ModelConfig field a user may set."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError

# fields that are derived or bookkeeping, not for users to set
_HIDDEN = {"name"}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _type_of(annotation: str) -> Any:
    if "bool" in annotation:
        return _parse_bool
    if "int" in annotation:
        return int
    if "float" in annotation:
        return float
    return str


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model overrides (applied on top of the preset)")
    for f in fields(ModelConfig):
        if f.name not in _HIDDEN:
            group.add_argument(
                f"--model.{f.name}",
                dest=f"model__{f.name}",
                type=_type_of(str(f.type)),
                metavar=f.name.upper(),
                default=None,
                help=argparse.SUPPRESS,
            )
    group.description = (
        "--model.FIELD VALUE for any ModelConfig field, e.g. --model.n_layer 2 --model.d_model 128 "
        "(fields: " + ", ".join(f.name for f in fields(ModelConfig) if f.name not in _HIDDEN) + ")"
    )


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k[len("model__") :]: v for k, v in vars(args).items() if k.startswith("model__") and v is not None}


def require_positive(name: str, value: int) -> int:
    if value < 1:
        raise LlmkitError(f"{name}={value} must be >= 1", f"change {name}")
    return value
