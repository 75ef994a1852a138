"""Quantized modules and the swap that puts them into a model.

A quantized matrix keeps the stored format as buffers (``qweight``, ``scales``), so the state dict
is the checkpoint's layout, and runs in one of two ways:

- reference: dequantize the whole matrix to the input's dtype, then ``F.linear`` (any device, any
  dtype, any number of rows; the path the kernels are tested against). On CPU it is also the
  faster one for many rows (a prompt, an evaluation batch): BLAS beats the kernels there.
- CPU kernels (``use_kernels``), for inputs of few rows (decoding steps, ``KERNEL_MAX_ROWS``): int8
  through ``torch._weight_int8pack_mm`` (the int8 matrix as stored, scaled per output channel inside
  the kernel), int4 through ``torch._weight_int4pack_mm_for_cpu`` on a copy of the weights in the
  kernel's own layout, made once (it doubles the int4 weights' memory; the stored copy stays for
  saving).

Token embeddings are quantized per row with the same schemes (a row of the table is an output
channel of a tied head); a lookup dequantizes only the rows it reads. A head tied to a quantized
table reads the table's buffers, so the shared matrix is stored once, as in the float model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.models.embeddings import Embeddings
from llmkit.quantize import tensors
from llmkit.quantize.spec import QuantSpec

# Most input rows (per dtype) that go through torch's CPU kernels; more go through the reference path.
# Measured on this 2-core AMD EPYC (torch 2.13, 1 thread, a 4096 x 128 matrix, ms per call, kernel vs
# dequantize + F.linear): bf16 int8 1 row 0.04 vs 0.25, 16 rows 0.30 vs 0.30, 2048 rows 46 vs 13;
# bf16 int4 16 rows 0.29 vs 1.7, 2048 rows 30 vs 12; fp32 int8 1 row 0.42 vs 0.72 but 8 rows 3.5 vs
# 0.35 (the fp32 kernels are fast for one row only); fp32 int4 1 row 1.1 vs 2.6. fp16: not measured.
KERNEL_MAX_ROWS = {torch.bfloat16: 16, torch.float32: 1}


class QuantizedMatrix(nn.Module):
    """An (out, in) weight stored as int8 per channel or packed int4 per group; ``matmul(x) = x @ W.T``."""

    def __init__(self, out_features: int, in_features: int, spec: QuantSpec) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.method, self.group_size = spec.method, spec.group_size
        if self.method == "int8":
            qweight = torch.empty(out_features, in_features, dtype=torch.int8)
            scales = torch.empty(out_features)
        else:
            qweight = torch.empty(out_features, -(-in_features // 2), dtype=torch.uint8)
            scales = torch.empty(out_features, tensors.n_groups(in_features, self.group_size))
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.kernel = False  # set by use_kernels
        self.register_buffer("kernel_weight", None, persistent=False)  # int4 kernel layout
        self.register_buffer("kernel_scales", None, persistent=False)
        # weights loaded after use_kernels would leave int4's kernel copy stale: rebuild it
        self.register_load_state_dict_post_hook(lambda module, _keys: module.refresh_kernel())

    @torch.no_grad()
    def quantize_(self, weight: torch.Tensor) -> None:
        """Fill the buffers from a float (out, in) weight."""
        q, scales = (
            tensors.quantize_int8(weight) if self.method == "int8" else tensors.quantize_int4(weight, self.group_size)
        )
        self.qweight.copy_(q)
        self.scales.copy_(scales)
        self.refresh_kernel()

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The weight (or only ``rows`` of it, e.g. looked-up token ids) as ``dtype``: (..., in)."""
        q, scales = (self.qweight, self.scales) if rows is None else (self.qweight[rows], self.scales[rows])
        if self.method == "int8":
            return tensors.dequantize_int8(q, scales, dtype)
        return tensors.dequantize_int4(q, scales, self.in_features, self.group_size, dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> x @ W.T (..., out): the CPU kernel for inputs of few rows (decoding), where
        it is faster, else the reference path (``KERNEL_MAX_ROWS``). An input that needs a gradient
        (LoRA over a quantized base) goes through ``FrozenMatmul``."""
        if x.requires_grad and torch.is_grad_enabled():
            return FrozenMatmul.apply(x, self)
        rows = x.numel() // self.in_features
        if self.kernel and x.device.type == "cpu" and rows <= KERNEL_MAX_ROWS.get(x.dtype, 0):
            return self.kernel_matmul(x)
        return F.linear(x, self.dequantize(x.dtype))

    def kernel_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> x @ W.T through torch's CPU kernel (``use_kernel`` first), whatever the rows."""
        flat = x.reshape(-1, self.in_features).contiguous()  # (N, in): the kernels take 2-D inputs
        if self.method == "int8":
            out = torch._weight_int8pack_mm(flat, self.qweight, self.scales.to(x.dtype))
        else:
            padded = self.kernel_scales.shape[0] * self.group_size  # whole groups, as the kernel requires
            flat = F.pad(flat, (0, padded - self.in_features))
            out = torch._weight_int4pack_mm_for_cpu(
                flat, self.kernel_weight, self.group_size, self.kernel_scales.to(x.dtype)
            )
        return out.reshape(*x.shape[:-1], self.out_features)

    @torch.no_grad()
    def use_kernel(self, enabled: bool = True) -> None:
        """Switch to the CPU kernel (building int4's layout on first use) or back to the reference path."""
        self.kernel = enabled and kernel_supported(self)
        if self.kernel and self.method == "int4" and self.kernel_weight is None:
            q = tensors.unpack_int4(self.qweight, self.in_features)
            self.kernel_weight, self.kernel_scales = tensors.int4_kernel_layout(q, self.scales.float(), self.group_size)

    def refresh_kernel(self) -> None:
        """Rebuild int4's kernel copy from the stored weights (after they changed), if there is one."""
        if self.kernel_weight is not None:
            self.kernel_weight = self.kernel_scales = None
            self.use_kernel(self.kernel)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.method == "int4" else ""
        return f"out={self.out_features}, in={self.in_features}, {self.method}{group}, kernel={self.kernel}"


class FrozenMatmul(torch.autograd.Function):
    """x @ W.T for a frozen quantized W that keeps nothing but the module for backward and dequantizes
    again there (as bitsandbytes' QLoRA does): F.linear would keep the dequantized 16-bit matrix of
    every layer until backward, more than the quantized base saves."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: QuantizedMatrix) -> torch.Tensor:
        ctx.m, ctx.x_dtype = m, x.dtype
        with torch.no_grad():
            return m.matmul(x)  # under autocast F.linear runs in its dtype, as without a gradient

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (grad @ ctx.m.dequantize(grad.dtype)).to(ctx.x_dtype), None  # (..., out) @ (out, in)


def kernel_supported(m: QuantizedMatrix) -> bool:
    """Whether torch's CPU kernel takes this matrix: CPU buffers, and for int4 ``out`` a multiple of 16."""
    on_cpu = m.qweight.device.type == "cpu"
    if m.method == "int8":
        return on_cpu and hasattr(torch, "_weight_int8pack_mm")
    return on_cpu and hasattr(torch, "_weight_int4pack_mm_for_cpu") and m.out_features % 16 == 0


class QuantizedLinear(QuantizedMatrix):
    """``nn.Linear`` with a quantized weight; the bias (if any) stays in float."""

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool = True) -> None:
        super().__init__(out_features, in_features, spec)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec, empty: bool = False) -> QuantizedLinear:
        """Quantize ``linear`` (``empty``: only allocate, for a loader to fill)."""
        q = cls(linear.in_features, linear.out_features, spec, bias=linear.bias is not None)
        if not empty:
            q.quantize_(linear.weight)
            if linear.bias is not None:
                q.bias.data = linear.bias.detach().clone()
        return q.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.matmul(x)
        return out if self.bias is None else out + self.bias


class QuantizedEmbedding(QuantizedMatrix):
    """``nn.Embedding`` with quantized rows; a lookup dequantizes only the rows it reads, to the dtype
    of the scales (fp32 as stored; ``model.to(dtype)`` casts them with the model's other floats)."""

    @classmethod
    def from_embedding(cls, table: nn.Embedding, spec: QuantSpec, empty: bool = False) -> QuantizedEmbedding:
        q = cls(table.num_embeddings, table.embedding_dim, spec)  # rows = out, width = in
        if not empty:
            q.quantize_(table.weight)
        return q.to(table.weight.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.dequantize(self.scales.dtype, rows=input_ids)  # (..., C)


class TiedQuantizedHead(nn.Module):
    """An output layer sharing a quantized embedding's matrix: logits = x @ table.T (+ bias).

    The table is held outside the module tree (a tuple), so its buffers appear once in the state dict
    and move once under ``.to()``, under the embedding's name, as a tied float head's weight does.
    """

    def __init__(self, table: QuantizedEmbedding, bias: nn.Parameter | None = None) -> None:
        super().__init__()
        self._table = (table,)
        self.bias = bias

    @property
    def table(self) -> QuantizedEmbedding:
        return self._table[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.table.matmul(x)
        return out if self.bias is None else out + self.bias


# ---- swapping modules -----------------------------------------------------------------------
def quantize_model(model: nn.Module, spec: QuantSpec, empty: bool = False) -> nn.Module:
    """Quantize ``model`` in place and return it.

    fp16/bf16: every floating tensor is cast. int8/int4, in order: the token embedding tables (when
    ``spec.embeddings``) -> every ``nn.Linear`` (attention q/k/v/o, MLP up/gate/down, heads, poolers):
    a linear tied to a quantized table becomes a ``TiedQuantizedHead`` over it, one tied to a table kept
    in float stays float (quantizing only the head would store the shared matrix twice). Norms, biases,
    position and token-type embeddings keep their dtype. ``empty=True`` only allocates the quantized
    buffers, for a loader to fill from a file.
    """
    if spec.is_cast:
        return model.to(spec.dtype)
    tables: dict[int, QuantizedEmbedding] = {}  # id of the float table's weight -> its quantized module
    if spec.embeddings:
        for embed in [m for m in model.modules() if isinstance(m, Embeddings)]:
            weight = embed.tokens.weight
            embed.tokens = QuantizedEmbedding.from_embedding(embed.tokens, spec, empty)
            tables[id(weight)] = embed.tokens
    float_tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for parent, name, linear in _linears(model):
        if id(linear.weight) in tables:
            setattr(parent, name, TiedQuantizedHead(tables[id(linear.weight)], linear.bias))
        elif id(linear.weight) not in float_tables:
            setattr(parent, name, QuantizedLinear.from_linear(linear, spec, empty))
    return model


def _linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, module) of every nn.Linear, collected before any is replaced."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]


def quantized_matrices(model: nn.Module) -> list[QuantizedMatrix]:
    return [m for m in model.modules() if isinstance(m, QuantizedMatrix)]


def use_kernels(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Run every quantized matrix of ``model`` through torch's CPU kernel where it takes the matrix
    (``enabled=False``: the dequantize-then-``F.linear`` reference path everywhere). Returns ``model``."""
    for m in quantized_matrices(model):
        m.use_kernel(enabled)
    return model
