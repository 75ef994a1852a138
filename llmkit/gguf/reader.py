"""Open a GGUF file: its metadata as plain Python values and its tensors dequantized to fp32.

The file layout (GGUF v2/v3, little-endian): magic ``GGUF``, version, tensor and key-value counts;
the key-values (typed scalars, strings, arrays); one info record per tensor (name, ggml dims with
the fastest dimension first, type, offset); then the tensor data, aligned. This module parses the
header itself because gguf's GGUFReader builds a numpy view per array element: 7 s for SmolLM2's
49k-token vocabulary against 0.1 s here. The dequantization math is the ``gguf`` package's
(llama.cpp's own Python code). Tensors come back in PyTorch's row-major (out, in) shape, which is
ggml's dimension order reversed.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmkit.errors import LlmkitError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# ggml types llmkit dequantizes: the float types and the block quantizations llama.cpp's
# converters and quantize tool write for Llama-family models: name -> (type id, block elements, block bytes)
TYPES = {
    "F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "BF16": (30, 1, 2),
}  # fmt: skip
TYPE_NAMES = {type_id: name for name, (type_id, _, _) in TYPES.items()}
# GGUF value types: id -> struct format of a scalar (8 string and 9 array are read apart)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # PyTorch order: (out, in) for a matrix
    type_name: str  # ggml type, e.g. "Q4_1"; "unknown(N)" for ids this module does not know
    offset: int  # absolute position of the first byte in the file
    nbytes: int


@dataclass
class GGUFFile:
    """A parsed GGUF file: ``metadata`` (key -> str/int/float/bool/list) and its tensors by name."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    data: mmap.mmap | bytes

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` dequantized to fp32, in PyTorch's (out, in) layout."""
        import gguf

        info = self.tensors[name]
        type_id, block, block_bytes = TYPES[info.type_name]
        raw = np.frombuffer(self.data, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        rows = raw.reshape(*info.shape[:-1], info.shape[-1] // block * block_bytes)  # bytes per row last
        data = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(type_id))
        data = np.require(data, np.float32, ["C", "W"])  # copies f32 only: it comes back as a view of the file
        return torch.from_numpy(data.reshape(info.shape))

    def type_counts(self) -> dict[str, int]:
        """How many tensors use each ggml type, e.g. {"Q4_1": 210, "F32": 61}."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return counts


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse ``path``; a missing, foreign, truncated or unsupported file is a one-line LlmkitError."""
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"{path}: no such file", "pass a .gguf file (llama.cpp / Ollama format)")
    with path.open("rb") as f:
        if f.read(4) != MAGIC:
            raise LlmkitError(f"{path}: not a GGUF file (no GGUF magic number)", "pass a .gguf file")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        metadata, tensors = _parse(data, path)
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as err:
        raise LlmkitError(f"{path}: corrupt or truncated GGUF file ({err})", "download or assemble it again") from None
    end = max((t.offset + t.nbytes for t in tensors.values()), default=0)
    if end > len(data):
        raise LlmkitError(
            f"{path}: truncated GGUF file ({len(data)} bytes, its tensors need {end})", "download or assemble it again"
        )
    for t in tensors.values():
        if t.type_name not in TYPES:
            raise LlmkitError(
                f"{path}: tensor '{t.name}' uses quantization type {t.type_name}, which llmkit does not read",
                f"llmkit reads {', '.join(TYPES)}; re-quantize the model to one of these with llama.cpp",
            )
    return GGUFFile(path, metadata, tensors, data)


class _Cursor:
    """Sequential little-endian reads over the file's bytes."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data, self.pos = data, 4  # after the magic

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        if self.pos + n > len(self.data):
            raise ValueError("string runs past the end of the file")
        text = bytes(self.data[self.pos : self.pos + n]).decode("utf-8")
        self.pos += n
        return text

    def value(self, kind: int) -> Any:
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, n = self.scalar("<I"), self.scalar("<Q")
            if item in SCALARS:  # one unpack for the whole array
                fmt = SCALARS[item]
                values = struct.unpack_from(f"<{n}{fmt[1]}", self.data, self.pos)
                self.pos += n * struct.calcsize(fmt)
                return list(values)
            return [self.value(item) for _ in range(n)]
        if kind not in SCALARS:
            raise ValueError(f"unknown metadata value type {kind}")
        return self.scalar(SCALARS[kind])


def _parse(data: mmap.mmap | bytes, path: Path) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    c = _Cursor(data)
    version = c.scalar("<I")
    if version not in (2, 3):
        raise LlmkitError(f"{path}: GGUF version {version} is unsupported", "llmkit reads GGUF v2 and v3")
    n_tensors, n_kv = c.scalar("<Q"), c.scalar("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = c.string()
        metadata[key] = c.value(c.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name, n_dims = c.string(), c.scalar("<I")
        dims = [c.scalar("<Q") for _ in range(n_dims)]
        infos.append((name, tuple(reversed(dims)), c.scalar("<I"), c.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    start = -(-c.pos // alignment) * alignment  # tensor data begins at the next aligned offset
    tensors = {}
    for name, shape, type_id, offset in infos:
        type_name = TYPE_NAMES.get(type_id, _ggml_name(type_id))
        _, block, block_bytes = TYPES.get(type_name, (type_id, 1, 0))
        n = int(np.prod(shape)) if shape else 1
        if shape and shape[-1] % block:
            raise ValueError(f"tensor '{name}' rows of {shape[-1]} are not whole blocks of {block}")
        tensors[name] = TensorInfo(name, shape, type_name, start + offset, n // block * block_bytes)
    return metadata, tensors


def _ggml_name(type_id: int) -> str:
    """The ggml name of a type llmkit does not read (for the error message)."""
    import gguf

    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return f"unknown({type_id})"
