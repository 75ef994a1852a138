"""TOML config files as tables of dataclasses: the one loader of `pretrain`, `finetune` and `scale sweep`
configs (llmkit.runconfig, llmkit.finetune.config, llmkit.scale.sweep).

``read_tables``: the file's tables, only the allowed ones, each a table. ``from_table``: a config
dataclass from one table (merged with defaults and flags by the caller). Every problem is a one-line
``LlmkitError`` naming the file and table. Standard library only (L0).
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from llmkit.errors import LlmkitError
from llmkit.files import read_toml

T = TypeVar("T")


def read_tables(path: str | os.PathLike, allowed: tuple[str, ...], examples: str) -> dict[str, dict[str, Any]]:
    """The tables of the TOML file ``path``: a missing file, bad TOML, a table or key outside ``allowed``
    or a key that is not a table is an error (``examples``: where example files are, for the hint)."""
    path = Path(path)
    tables = read_toml(
        path, f"fix the file (see {examples} for examples)", f"check the path (examples are in {examples})"
    )
    unknown = sorted(set(tables) - set(allowed))
    if unknown:
        names = ", ".join(f"[{name}]" for name in allowed[:-1])
        names = f"{names} and [{allowed[-1]}]" if names else f"[{allowed[-1]}]"
        raise LlmkitError(f"{path}: unknown table or key {', '.join(unknown)}", f"the file holds {names}")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise LlmkitError(f"{path}: {name} must be a table ([{name}])", f"see {examples} for examples")
    return tables


def check_fields(cls: type, data: dict[str, Any], source: str, table: str) -> dict[str, Any]:
    """``data`` unchanged when every key is a field of the dataclass ``cls``; else one error listing the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LlmkitError(
            f"{source}: unknown {table} config field(s) {', '.join(unknown)}",
            f"known fields are: {', '.join(sorted(known))}",
        )
    return data


def from_table(cls: type[T], data: dict[str, Any], source: str, table: str) -> T:
    """``cls(**data)`` for a config dataclass; an unknown field is an error listing the known ones, a value of
    the wrong type one naming ``source`` (the file and table, e.g. ``run.toml [train]``)."""
    try:
        return cls(**check_fields(cls, data, source, table))
    except TypeError as err:
        raise LlmkitError(f"{source}: a value has the wrong type ({err})", "check the values in that table") from None
