"""QuantSpec: what a quantized checkpoint holds, saved as the ``quantization`` entry of config.json."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from llmkit.errors import LlmkitError

METHODS = ("fp16", "bf16", "int8", "int4")
SCHEMES = ("symmetric", "asymmetric")
CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16}
BITS = {"fp16": 16, "bf16": 16, "int8": 8, "int4": 4}
GROUP_SIZES = (32, 64, 128, 256)  # multiples of 32: whole halves of the int4 kernel's 64-weight chunks
DEFAULT_GROUP_SIZE = {"int4": 32, "int8": None}  # int4: GGUF's Q4_1 block; int8: one scale per row
DEFAULT_SCHEME = {"int4": "asymmetric", "int8": "symmetric"}
LAYOUT = 2  # the stored format (llmkit.quantize.tensors); 1 was int4 column pairs with fp32 scales


@dataclass(frozen=True)
class QuantSpec:
    """``method``: fp16 | bf16 (every floating tensor cast) or int8 | int4 (weight-only, per group).

    ``group_size``: input weights per scale (int4 default 32; int8 default None, one scale per output
    channel). ``scheme``: symmetric (scale only) or asymmetric (scale and minimum; int4's default, the
    format of GGUF's Q4_1). ``embeddings``: int8/int4 also quantize the token embedding table (per row,
    the same scheme), and with it a tied head; False keeps the table, and a head tied to it, in float.
    ``overrides``: module name (``stack.layers.0.mlp.down``, ``embed.tokens``) -> the spec of that
    matrix, or None to keep it in float: a GGUF file mixes formats (Q4_1 blocks, a Q8_0 embedding table,
    an F16 matrix whose rows are not whole blocks), and its import keeps each as stored.
    """

    method: str
    group_size: int | None = None
    embeddings: bool = True
    scheme: str | None = None
    overrides: dict[str, QuantSpec | None] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LlmkitError(f"unknown quantization '{self.method}'", f"choose --to from: {', '.join(METHODS)}")
        if self.is_cast:
            if self.group_size is not None or self.scheme is not None:
                raise LlmkitError(
                    f"--group-size and --scheme apply to int8 and int4, not {self.method}",
                    f"{self.method} casts every floating tensor; drop them",
                )
            return
        size = DEFAULT_GROUP_SIZE[self.method] if self.group_size is None else self.group_size
        if size is not None and size not in GROUP_SIZES:
            raise LlmkitError(
                f"group size {size} is not supported", f"choose --group-size from: {', '.join(map(str, GROUP_SIZES))}"
            )
        scheme = self.scheme or DEFAULT_SCHEME[self.method]
        if scheme not in SCHEMES:
            raise LlmkitError(f"unknown scheme '{scheme}'", f"choose --scheme from: {', '.join(SCHEMES)}")
        object.__setattr__(self, "group_size", size)  # frozen: fill the defaults once
        object.__setattr__(self, "scheme", scheme)

    def for_module(self, name: str, table: bool = False) -> QuantSpec | None:
        """The spec of the matrix ``name`` (an embedding table when ``table``), or None to keep it in float."""
        if name in self.overrides:
            return self.overrides[name]
        if table and not self.embeddings:
            return None
        return replace(self, overrides={}) if self.overrides else self

    @property
    def is_cast(self) -> bool:
        return self.method in CASTS

    @property
    def symmetric(self) -> bool:
        return self.scheme == "symmetric"

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype every floating tensor is cast to (fp16/bf16); None for int8/int4."""
        return CASTS.get(self.method)

    @property
    def bits(self) -> int:
        return BITS[self.method]

    def describe(self) -> str:
        """One line for people: 'int4, group 32, asymmetric (scale and min), embeddings quantized'."""
        if self.is_cast:
            return f"{self.method} (every floating tensor cast)"
        where = "per output channel" if self.group_size is None else f"group {self.group_size}"
        how = "symmetric (scale)" if self.symmetric else "asymmetric (scale and min)"
        tables = "embeddings quantized" if self.embeddings else "embeddings kept in float"
        kept = sum(spec is None for spec in self.overrides.values())
        others = f", {len(self.overrides) - kept} matrices in other formats" if len(self.overrides) > kept else ""
        floats = f", {kept} matrices kept in float" if kept else ""
        return f"{self.method}, {where}, {how}, {tables}{others}{floats}"

    def to_dict(self) -> dict[str, Any]:
        """The config.json entry; the scheme's constants are spelled out for other readers of the file."""
        if self.is_cast:
            return {"method": self.method, "bits": self.bits}
        if self.method == "int8":
            values = "scale * q, q int8 in [-127, 127]" if self.symmetric else "scale * q + min, q uint8 in [0, 255]"
            packing = None
        else:
            values = "scale * (q - 8), q in [1, 15]" if self.symmetric else "scale * q + min, q in [0, 15]"
            packing = "64-weight chunks of 32 bytes; 16-bit word i holds weight 16k + i in bits 4k..4k+3"
        return {
            "method": self.method,
            "bits": self.bits,
            "layout": LAYOUT,
            "group_size": self.group_size,
            "scheme": self.scheme,
            "values": values,
            "scales": "float16 per (row, group)" + ("" if self.symmetric else ", mins float16 per (row, group)"),
            "packing": packing,
            "embeddings": self.embeddings,
            **({"overrides": {k: "float" if v is None else v.to_dict() for k, v in self.overrides.items()}}
               if self.overrides else {}),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, source: str) -> QuantSpec:
        if not isinstance(data, dict) or data.get("method") not in METHODS:
            raise LlmkitError(f"{source}: invalid quantization entry {data!r}", "re-run llmkit quantize")
        if data["method"] in ("int8", "int4") and data.get("layout") != LAYOUT:
            raise LlmkitError(
                f"{source}: {data['method']} weights in an earlier llmkit layout (before group scales and GGUF's "
                "formats)",
                "re-run `llmkit quantize` on the float checkpoint it came from",
            )
        fields = {key: data.get(key) for key in ("group_size", "scheme")} if data["method"] in ("int8", "int4") else {}
        overrides = data.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise LlmkitError(f"{source}: invalid quantization overrides {overrides!r}", "re-run llmkit quantize")
        fields["overrides"] = {
            name: None if entry == "float" else cls.from_dict(entry, source) for name, entry in overrides.items()
        }
        return cls(data["method"], embeddings=bool(data.get("embeddings", True)), **fields)
