"""Bytes per value of weights, gradients, optimizer states and activations, per precision and optimizer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    """Bytes per value of each kind of tensor a training step keeps.

    ``residual``: the residual stream and norm inputs; ``matmul``: inputs of matrix multiplies and
    the activations between them. ``autocast``: torch.autocast, which saves a 16-bit copy of every
    weight and of every fp32 input per linear layer (it caches casts of leaf tensors only).
    ``persistent_grads``: gradients live in buffers for the whole run (Megatron, DeepSpeed) rather
    than being freed between steps (PyTorch's ``zero_grad(set_to_none=True)``, llmkit's step).
    """

    name: str
    description: str
    weights: float  # bytes per parameter of the weights compute reads (inference: the whole model)
    master: float = 0.0  # an fp32 copy the optimizer updates
    grads: float = 0.0
    state: float = 4.0  # bytes per optimizer state value
    residual: int = 2
    matmul: int = 2
    kv: int = 2  # bytes per KV-cache value at inference
    autocast: bool = False
    persistent_grads: bool = False
    trainable: bool = True


PRECISIONS = {
    p.name: p
    for p in (
        Precision("fp32", "fp32 everything", weights=4, grads=4, residual=4, matmul=4, kv=4),
        Precision(
            "amp",
            "torch.autocast bf16 with fp32 weights, grads and optimizer (llmkit pretrain --train.dtype bf16)",
            weights=4, grads=4, residual=4, kv=4, autocast=True,  # serving it: fp32 weights and cache
        ),
        Precision(
            "mixed",
            "Megatron/DeepSpeed mixed precision: 16-bit weights + fp32 master copy, 16-bit grads, fp32 states",
            weights=2, master=4, grads=2, persistent_grads=True,
        ),
        Precision("bf16", "pure bf16: weights, grads, optimizer states and activations", weights=2, grads=2, state=2),
        Precision("fp16", "pure fp16: weights, grads, optimizer states and activations", weights=2, grads=2, state=2),
        Precision("int8", "int8 weight-only quantization, 16-bit activations (inference)", weights=1, trainable=False),
        Precision("int4", "int4 weight-only quantization, 16-bit activations (inference)", weights=0.5,
                  trainable=False),
    )
}  # fmt: skip

# optimizer state values per parameter, and whether they are 1-byte (8-bit optimizers) regardless of precision
OPTIMIZERS = {
    "adamw": (2, False),  # exp_avg and exp_avg_sq (Loshchilov & Hutter 2019)
    "sgd": (1, False),  # the momentum buffer
    "adamw8bit": (2, True),  # both moments block-quantized to 8 bits (Dettmers et al. 2022); scales not counted
}
RECOMPUTE = ("none", "selective", "full")
ATTENTION = ("flash", "math")
DEVICES = ("cuda", "cpu")  # where the step runs: PyTorch keeps some tensors differently on each


def optimizer_bytes(optimizer: str, precision: Precision) -> float:
    """Bytes of optimizer state per parameter: AdamW 8 in fp32, SGD with momentum 4, 8-bit AdamW 2."""
    values, one_byte = OPTIMIZERS[optimizer]
    return values * (1 if one_byte else precision.state)
