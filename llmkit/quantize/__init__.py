"""Quantization: fp16/bf16 casts and int8/int4 weight-only formats for llmkit models.

tensors   int8 / int4 per group, symmetric or asymmetric: quantize, dequantize, pack (pure functions)
spec      QuantSpec: method, group size, scheme, embeddings, per-matrix overrides; config.json's `quantization`
kernels   fused dequantize + matmul on the CPU (llmkit/cpu_matmul.c) as torch custom ops
layers    QuantizedLinear / QuantizedEmbedding / TiedQuantizedHead / Bf16Linear, quantize_model, use_kernels
explain   how one number is stored in each format, bit by bit

Writing a quantized checkpoint is llmkit.quantize_checkpoint (it needs llmkit.checkpoint, which imports
this package).
"""

from __future__ import annotations

from llmkit.quantize.layers import (
    Bf16Linear,
    QuantizedEmbedding,
    QuantizedLinear,
    QuantizedMatrix,
    TiedQuantizedHead,
    quantize_model,
    use_bf16_kernels,
    use_kernels,
)
from llmkit.quantize.spec import METHODS, QuantSpec

__all__ = [
    "Bf16Linear",
    "METHODS",
    "QuantSpec",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "QuantizedMatrix",
    "TiedQuantizedHead",
    "quantize_model",
    "use_bf16_kernels",
    "use_kernels",
]
