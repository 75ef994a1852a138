"""Quantization: fp16/bf16 casts and int8/int4 weight-only formats for llmkit models.

tensors   int8 per output channel, int4 per group: quantize, dequantize, pack (pure functions)
spec      QuantSpec: method, group size, embeddings; the `quantization` entry of config.json
layers    QuantizedLinear / QuantizedEmbedding / TiedQuantizedHead, quantize_model, use_kernels
explain   how one number is stored in each format, bit by bit

Writing a quantized checkpoint is llmkit.quantize_checkpoint (it needs llmkit.checkpoint, which imports
this package).
"""

from __future__ import annotations

from llmkit.quantize.layers import (
    QuantizedEmbedding,
    QuantizedLinear,
    QuantizedMatrix,
    TiedQuantizedHead,
    quantize_model,
    use_kernels,
)
from llmkit.quantize.spec import METHODS, QuantSpec

__all__ = [
    "METHODS",
    "QuantSpec",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "QuantizedMatrix",
    "TiedQuantizedHead",
    "quantize_model",
    "use_kernels",
]
