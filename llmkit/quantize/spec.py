"""QuantSpec: what a quantized checkpoint holds, saved as the ``quantization`` entry of config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmkit.errors import LlmkitError

METHODS = ("fp16", "bf16", "int8", "int4")
CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16}
BITS = {"fp16": 16, "bf16": 16, "int8": 8, "int4": 4}
GROUP_SIZES = (32, 64, 128)  # sizes torch's CPU int4 kernel takes too
DEFAULT_GROUP_SIZE = 64


@dataclass(frozen=True)
class QuantSpec:
    """``method``: fp16 | bf16 (every floating tensor cast) or int8 | int4 (weight-only, symmetric absmax).

    int8 has one scale per output channel; int4 one per ``group_size`` input weights of a row
    (default 64). ``embeddings``: int8/int4 also quantize the token embedding table (per row, the same
    scheme), and with it a tied head; False keeps the table, and a head tied to it, in float.
    """

    method: str
    group_size: int | None = None
    embeddings: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LlmkitError(f"unknown quantization '{self.method}'", f"choose --to from: {', '.join(METHODS)}")
        if self.method != "int4" and self.group_size is not None:
            raise LlmkitError(
                f"--group-size applies to int4 only, not {self.method}",
                "int8 has one scale per output channel; drop --group-size",
            )
        if self.method == "int4":
            size = DEFAULT_GROUP_SIZE if self.group_size is None else self.group_size
            if size not in GROUP_SIZES:
                raise LlmkitError(
                    f"group size {size} is not supported",
                    f"choose --group-size from: {', '.join(map(str, GROUP_SIZES))}",
                )
            object.__setattr__(self, "group_size", size)  # frozen: fill the default once

    @property
    def is_cast(self) -> bool:
        return self.method in CASTS

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype every floating tensor is cast to (fp16/bf16); None for int8/int4."""
        return CASTS.get(self.method)

    @property
    def bits(self) -> int:
        return BITS[self.method]

    def describe(self) -> str:
        """One line for people: 'int4, group 64, symmetric absmax, embeddings quantized'."""
        if self.is_cast:
            return f"{self.method} (every floating tensor cast)"
        where = "per output channel" if self.method == "int8" else f"group {self.group_size}"
        tables = "embeddings quantized" if self.embeddings else "embeddings kept in float"
        return f"{self.method}, {where}, symmetric absmax, {tables}"

    def to_dict(self) -> dict[str, Any]:
        """The config.json entry; the scheme's constants are spelled out for other readers of the file."""
        if self.is_cast:
            return {"method": self.method, "bits": self.bits}
        qmax = 127 if self.method == "int8" else 7
        return {
            "method": self.method,
            "bits": self.bits,
            "group_size": self.group_size,
            "scheme": "symmetric absmax",
            "range": [-qmax, qmax],
            "scales": "float32, per output channel" if self.method == "int8" else "float32, per (row, group)",
            "packing": None if self.method == "int8" else "uint8, q + 8 per nibble, even input column low",
            "embeddings": self.embeddings,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> QuantSpec:
        if not isinstance(data, dict) or data.get("method") not in METHODS:
            raise LlmkitError(f"{source}: invalid quantization entry {data!r}", "re-run llmkit quantize")
        return cls(data["method"], data.get("group_size"), bool(data.get("embeddings", True)))
