"""GGUF's Q4_0, Q4_1 and Q8_0 blocks -> llmkit's int4/int8 buffers, bit for bit.

A block of 32 weights in the file is an fp16 scale ``d`` (and for Q4_1 an fp16 minimum ``m``) followed
by the integers (ggml-common.h): Q4_0 18 bytes, w = d * (q - 8) with q in 0..15, byte j holding
weights j (low nibble) and j + 16 (high); Q4_1 20 bytes, w = d * q + m; Q8_0 34 bytes, w = d * q with
q int8. These are llmkit's symmetric int4, asymmetric int4 and symmetric int8 formats with groups of
32 (llmkit.quantize.tensors), so the scales and minimums are copied as they are and the integers only
repacked: nothing is dequantized and quantized again, and the model reads back exactly the weights
the file holds (``d * q`` is exact in fp32; the minimum is added once, as llama.cpp adds it).

Other types (F32/F16/BF16, the K-quants, Q5_0/Q5_1) are not held in an llmkit format: their matrices
are dequantized and kept in float, recorded per matrix in the spec's ``overrides``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from llmkit.gguf.reader import TYPES, GGUFFile
from llmkit.quantize import tensors
from llmkit.quantize.spec import QuantSpec

IMPORTED = {
    "Q4_0": QuantSpec("int4", 32, scheme="symmetric"),
    "Q4_1": QuantSpec("int4", 32, scheme="asymmetric"),
    "Q8_0": QuantSpec("int8", 32, scheme="symmetric"),
}


def _blocks(f: GGUFFile, name: str) -> np.ndarray:
    """The tensor's bytes as (rows, blocks per row, bytes per block)."""
    info = f.tensors[name]
    _, block, block_bytes = TYPES[info.type_name]
    raw = np.frombuffer(f.data, dtype=np.uint8, count=info.nbytes, offset=info.offset)
    return raw.reshape(-1, info.shape[-1] // block, block_bytes)


def _fp16(b: np.ndarray) -> torch.Tensor:
    """(rows, blocks, 2) bytes -> (rows, blocks) fp16 scales, the bits unchanged."""
    return torch.from_numpy(np.ascontiguousarray(b).view(np.float16)[..., 0].copy())


def _nibbles(qs: np.ndarray) -> torch.Tensor:
    """(rows, blocks, 16) bytes of 4-bit pairs -> (rows, blocks * 32) integers 0..15 in weight order."""
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # byte j: weight j low, weight j + 16 high
    return torch.from_numpy(q.reshape(q.shape[0], -1).copy())


def stored(f: GGUFFile, name: str) -> tuple[QuantSpec, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Tensor ``name`` of a Q4_0/Q4_1/Q8_0 type as (spec, qweight, scales, mins) in llmkit's layout."""
    kind = f.tensors[name].type_name
    b = _blocks(f, name)
    if kind == "Q4_0":
        return IMPORTED[kind], tensors.pack_int4(_nibbles(b[..., 2:18])), _fp16(b[..., 0:2]), None
    if kind == "Q4_1":
        return IMPORTED[kind], tensors.pack_int4(_nibbles(b[..., 4:20])), _fp16(b[..., 0:2]), _fp16(b[..., 2:4])
    if kind == "Q8_0":
        q = np.ascontiguousarray(b[..., 2:34]).view(np.int8).reshape(b.shape[0], -1)
        return IMPORTED[kind], torch.from_numpy(q.copy()), _fp16(b[..., 0:2]), None
    raise ValueError(f"{name}: {kind} has no llmkit format")


def plan(f: GGUFFile, matrices: dict[str, str]) -> QuantSpec:
    """The spec that keeps every matrix as stored: ``matrices`` maps an llmkit module name (``embed.tokens``,
    ``stack.layers.0.mlp.down``) to its tensor in the file. The most common imported format is the base;
    each matrix in another format, or in none (kept in float), is an override."""
    kinds = {module: f.tensors[theirs].type_name for module, theirs in matrices.items()}
    counts = Counter(kind for kind in kinds.values() if kind in IMPORTED)
    if not counts:
        raise ValueError("no Q4_0, Q4_1 or Q8_0 matrices")
    base = IMPORTED[counts.most_common(1)[0][0]]
    overrides = {module: IMPORTED.get(kind) for module, kind in kinds.items() if IMPORTED.get(kind) != base}
    return QuantSpec(base.method, base.group_size, scheme=base.scheme, overrides=overrides)
