"""Shared CLI options: `--model.FIELD VALUE` overrides for every ModelConfig field a user may set."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _type_of(annotation: str) -> Any:
    """argparse's type for a field's annotation (a string: the configs use postponed annotations).
    Lists stay text: the configs split "a,b" themselves (``--task.weights 0.7,0.3``)."""
    if annotation.startswith(("list", "tuple")):
        return str
    if "bool" in annotation:
        return _parse_bool
    if "int" in annotation:
        return int
    if "float" in annotation:
        return float
    return str


def add_config_flags(
    parser: argparse.ArgumentParser,
    config: type,
    prefix: str,
    title: str,
    example: str,
    hidden: frozenset = frozenset(),
) -> None:
    """``--PREFIX.FIELD VALUE`` for every field of the dataclass ``config`` but ``hidden`` ones."""
    names = [f for f in fields(config) if f.name not in hidden]
    group = parser.add_argument_group(title)
    for f in names:
        group.add_argument(f"--{prefix}.{f.name}", dest=f"{prefix}__{f.name}", type=_type_of(str(f.type)),
                           metavar=f.name.upper(), default=None, help=argparse.SUPPRESS)  # fmt: skip
    group.description = (
        f"--{prefix}.FIELD VALUE for any {config.__name__} field, e.g. {example} "
        "(fields: " + ", ".join(f.name for f in names) + ")"
    )


def config_overrides(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The ``--PREFIX.FIELD`` values the user set (unset flags stay None and are left out)."""
    start = f"{prefix}__"
    return {k[len(start) :]: v for k, v in vars(args).items() if k.startswith(start) and v is not None}


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    # a model's name has its own flag (--name) where a command names what it writes
    add_config_flags(parser, ModelConfig, "model", "model overrides (applied on top of the preset)",
                     "--model.n_layer 2 --model.d_model 128", hidden=frozenset({"name"}))  # fmt: skip


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return config_overrides(args, "model")


def whole_number(flag: str, text: str | None, default: int | None = None, minimum: int = 1) -> int | None:
    """A whole-number flag's value (``default`` when not given): not a number, or below ``minimum``,
    is a one-line error naming the flag."""
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise LlmkitError(f"{flag} '{text}' is not an integer", f"e.g. {flag} 8") from None
    if value < minimum:
        raise LlmkitError(f"{flag} {value} must be >= {minimum}", f"change {flag}")
    return value


def require_positive(name: str, value: int) -> int:
    if value < 1:
        raise LlmkitError(f"{name}={value} must be >= 1", f"change {name}")
    return value


def tokenizer_dir(text: str) -> str:
    """``--tokenizer`` as argparse's type: a tokenizer folder, or its ``tokenizer.json`` (which means its folder).
    A file of another name is refused with what to pass, since roles and added files live beside it."""
    path = Path(text)
    if path.is_file():
        if path.name == "tokenizer.json":
            return str(path.parent)
        raise argparse.ArgumentTypeError(f"{text} is a file; pass the folder that holds tokenizer.json")
    return text
