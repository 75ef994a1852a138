"""Open a GGUF file: its metadata as plain Python values and its tensors dequantized to fp32.

The ``gguf`` package (llama.cpp's own Python reader) parses the file and dequantizes; this module
turns its failures into one-line errors and checks every tensor's type before any is read.
Tensors come back in PyTorch's row-major shape: the reader reports ggml's dimension order (the
fastest dimension first, so a (out, in) matrix shows as [in, out]), while ``tensor.data`` is
already laid out as (out, in).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmkit.errors import LlmkitError

MAGIC = b"GGUF"
# ggml types llmkit dequantizes: the float types and the block quantizations llama.cpp's
# converters and quantize tool write for Llama-family models; gguf's numpy code does the math.
SUPPORTED_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip


@dataclass
class GGUFFile:
    """A parsed GGUF file: ``metadata`` (key -> str/int/float/bool/list) and its tensors by name."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, Any]  # name -> gguf.ReaderTensor

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def shape(self, name: str) -> tuple[int, ...]:
        """PyTorch shape of tensor ``name`` (ggml's dimension order reversed)."""
        return tuple(int(n) for n in reversed(self.tensors[name].shape))

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` dequantized to fp32, in PyTorch's (out, in) layout."""
        import gguf

        t = self.tensors[name]
        data = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if not data.flags.writeable:  # f32 tensors come back as views of the read-only file mapping
            data = data.copy()
        return torch.from_numpy(data.reshape(self.shape(name)))

    def type_counts(self) -> dict[str, int]:
        """How many tensors use each ggml type, e.g. {"Q4_1": 210, "F32": 61}."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        return counts


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse ``path``; a missing, foreign, truncated or unsupported file is a one-line LlmkitError."""
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"{path}: no such file", "pass a .gguf file (llama.cpp / Ollama format)")
    with path.open("rb") as f:
        if f.read(4) != MAGIC:
            raise LlmkitError(f"{path}: not a GGUF file (no GGUF magic number)", "pass a .gguf file")
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # the reader raises ValueError/IndexError/struct errors on short files
        raise LlmkitError(f"{path}: corrupt or truncated GGUF file ({err})", "download or assemble it again") from None
    _check_complete(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise LlmkitError(
                f"{path}: tensor '{t.name}' uses quantization type {t.tensor_type.name}, which llmkit does not read",
                f"llmkit reads {', '.join(SUPPORTED_TYPES)}; re-quantize the model to one of these with llama.cpp",
            )
    return GGUFFile(path, read_metadata(reader, path), tensors)


def _check_complete(reader: Any, path: Path) -> None:
    """The reader maps tensors lazily; a file cut inside the last tensor would only fail later."""
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    size = path.stat().st_size
    if end > size:
        raise LlmkitError(
            f"{path}: truncated GGUF file ({size} bytes, its tensors need {end})", "download or assemble it again"
        )


def read_metadata(reader: Any, path: Path) -> dict[str, Any]:
    """Every key-value field as Python values (strings decoded, arrays as lists)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the header (version, counts), not model metadata
            continue
        try:
            out[key] = field.contents()
        except Exception as err:  # a string that is not UTF-8, an array cut short
            raise LlmkitError(
                f"{path}: cannot read metadata '{key}' ({err})",
                "the file is corrupt; download it again",
            ) from None
    return out
