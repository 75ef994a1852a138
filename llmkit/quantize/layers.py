"""Quantized modules and the swap that puts them into a model.

A quantized matrix keeps the stored format as buffers (``qweight``, ``scales`` and, for asymmetric
schemes, ``mins``; llmkit.quantize.tensors), so the state dict is the checkpoint's layout, and runs in
one of two ways:

- reference: dequantize the whole matrix to the input's dtype, then ``F.linear`` (any device, any
  dtype, any number of rows; the path the kernels are tested against). On CPU it is also the
  faster one for many rows (a prompt, an evaluation batch): BLAS beats the kernels there.
- CPU kernels (``use_kernels``), for inputs of few rows (decoding steps, ``KERNEL_MAX_ROWS``): the fused
  dequantize-and-multiply of llmkit.quantize.kernels, which reads the stored format directly.

The integer buffers and fp16 scales keep their dtype under ``model.to(dtype)`` (only the bias and the
dtype a lookup returns follow it): casting scales to bf16 would change the stored weights.

Token embeddings are quantized per row with the same schemes (a row of the table is an output
channel of a tied head); a lookup dequantizes only the rows it reads. A head tied to a quantized
table reads the table's buffers, so the shared matrix is stored once, as in the float model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.models.embeddings import Embeddings
from llmkit.quantize import kernels, tensors
from llmkit.quantize.spec import QuantSpec

# Most input rows that go through the C kernels, per format; more go through the reference path: the whole
# matrix dequantized in C (AVX-512: 16 weights an instruction), then BLAS. The kernels hold 4 rows in
# registers per pass over the weights and decode the weights again on every pass, so their cost grows with
# the rows; the dequantizing costs the same for any rows, 4 bytes written per weight. SmolLM2's matrices, 2
# threads, us a call, kernel vs reference (2026-12-07/08, load ~1): int4 (Q4_1) 1536 x 576 at 8 rows 394 vs
# 485, at 16 rows 773 vs 543, at 64 rows 2739 vs 1163; int8 (Q8_0), whose kernel decodes nothing, 1536 x 576
# at 32 rows 1089 vs 2005, at 64 rows 2004 vs 2393, the 49152 x 576 head at 16 rows 17.4 vs 32.5 ms and at
# 64 rows 58.5 vs 54.2 ms. A batch of the server's 64 streams takes the reference path for int4. (With the
# scalar C dequantizer, 2.5 ns a weight, the kernels won up to 128 rows.)
KERNEL_MAX_ROWS = {"int4": 8, "int8": 48}
# bf16 weights need no dequantizing: oneDNN's bf16 GEMM takes over from a few rows on (2 threads, us a
# call, kernel vs F.linear: 1536 x 576 1 row 78 vs 126, 4 rows 114 vs 134, 8 rows 238 vs 200; the
# 49152 x 576 head 1 row 3550 vs 8452, 4 rows 15204 vs 5000; measured beside other work, load ~2).
BF16_KERNEL_MAX_ROWS = 2
_STORED = ("qweight", "scales", "mins")  # buffers that keep their dtype under .to(dtype)


class QuantizedMatrix(nn.Module):
    """An (out, in) weight stored as int8 or int4 per group; ``matmul(x) = x @ W.T``."""

    def __init__(self, out_features: int, in_features: int, spec: QuantSpec) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.method, self.symmetric = spec.method, spec.symmetric
        self.group_size = spec.group_size or in_features  # int8 per channel: one group per row
        groups = tensors.n_groups(in_features, self.group_size)
        if self.method == "int8":
            qweight = torch.empty(out_features, in_features, dtype=torch.int8 if self.symmetric else torch.uint8)
        else:
            qweight = torch.empty(out_features, tensors.packed_width(in_features), dtype=torch.uint8)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", torch.empty(out_features, groups, dtype=torch.float16))
        self.register_buffer("mins", None if self.symmetric else torch.empty(out_features, groups, dtype=torch.float16))
        self.compute_dtype = torch.float32  # what a lookup returns; follows model.to(dtype)
        self.kernel = False  # set by use_kernels

    @torch.no_grad()
    def quantize_(self, weight: torch.Tensor) -> None:
        """Fill the buffers from a float (out, in) weight."""
        group = None if self.group_size == self.in_features and self.method == "int8" else self.group_size
        if self.method == "int8":
            q, scales, mins = tensors.quantize_int8(weight, group, self.symmetric)
        else:
            q, scales, mins = tensors.quantize_int4(weight, self.group_size, self.symmetric)
        self.load_stored_(q, scales, mins)

    @torch.no_grad()
    def load_stored_(self, q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None) -> None:
        """Fill the buffers with an already stored matrix (e.g. a GGUF file's blocks), checked for shape."""
        for name, value in (("qweight", q), ("scales", scales), ("mins", mins)):
            buffer = getattr(self, name)
            if (buffer is None) != (value is None) or (buffer is not None and buffer.shape != value.shape):
                raise ValueError(f"{name}: expected {None if buffer is None else tuple(buffer.shape)}")
            if buffer is not None:
                buffer.copy_(value)

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The weight (or only ``rows`` of it, e.g. looked-up token ids) as ``dtype``: (..., in). The
        whole matrix of a module on the kernels comes from the C dequantizer: in fp32 the same values as
        torch's reading; in 16 bits those values rounded once (torch's reading computes in 16 bits, a
        rounding more, and takes seconds for SmolLM2: a server's bf16 batches dequantize every step)."""
        on_kernels = self.kernel and self.qweight.device.type == "cpu" and not torch.compiler.is_compiling()
        if rows is None and dtype in (torch.float32, torch.bfloat16, torch.float16) and on_kernels:
            direct = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
            w = kernels.dequantize(
                self.qweight, self.scales, self.mins, self.method, self.in_features, self.group_size, direct
            )
            return w.to(dtype)  # fp16: the fp32 values rounded once; fp32 and bf16: as written
        pick = (lambda t: t) if rows is None else (lambda t: None if t is None else t[rows])
        q, scales, mins = pick(self.qweight), pick(self.scales), pick(self.mins)
        if self.method == "int8":
            return tensors.dequantize_int8(q, scales, mins, self.group_size, dtype)
        return tensors.dequantize_int4(q, scales, mins, self.in_features, self.group_size, dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> x @ W.T (..., out): the C kernel for inputs of few rows (decoding), where it is
        faster, else the reference path (``KERNEL_MAX_ROWS``). An input that needs a gradient (LoRA over
        a quantized base) goes through ``FrozenMatmul``."""
        if x.requires_grad and torch.is_grad_enabled():
            return FrozenMatmul.apply(x, self)
        if self.takes_kernel(x):
            return self.kernel_matmul(x)
        return F.linear(x, self.dequantize(x.dtype))

    def kernel_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> x @ W.T through the C kernel (fp32 or bf16 ``x`` on the CPU), whatever the rows."""
        (y,) = kernels.quantized_mm(
            x, [self.qweight], [self.scales], [self.mins], self.method, [self.out_features], self.group_size
        )
        return y

    def takes_kernel(self, x: torch.Tensor) -> bool:
        """Whether ``matmul(x)`` runs the C kernel."""
        rows = x.numel() // self.in_features
        return (
            self.kernel
            and x.device.type == "cpu"
            and x.dtype in kernels.KERNEL_DTYPES
            and rows <= KERNEL_MAX_ROWS[self.method]
            and not (x.requires_grad and torch.is_grad_enabled())
            and not torch.is_autocast_enabled("cpu")  # autocast casts F.linear's inputs; the op is not cast
        )

    def use_kernel(self, enabled: bool = True) -> None:
        """Switch to the C kernel (where built and on the CPU) or back to the reference path."""
        self.kernel = enabled and kernel_supported(self)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        # .to(dtype)/.half() must not touch the stored format: move those buffers' device only, and
        # remember the dtype asked for (a probe tensor shows what fn does to floats)
        probe = fn(torch.empty(0, dtype=self.compute_dtype, device=self.scales.device))  # a move keeps the dtype
        stored = {name: self._buffers[name] for name in _STORED}
        for name in _STORED:
            self._buffers[name] = None
        try:
            super()._apply(fn, recurse)
        finally:
            for name, t in stored.items():
                self._buffers[name] = None if t is None else t.to(probe.device)
        if probe.is_floating_point():
            self.compute_dtype = probe.dtype
        self.kernel = self.kernel and kernel_supported(self)
        return self

    def extra_repr(self) -> str:
        group = "per channel" if self.group_size == self.in_features else f"group_size={self.group_size}"
        shape = f"out={self.out_features}, in={self.in_features}"
        return f"{shape}, {self.method}, {group}, {self.scheme}, kernel={self.kernel}"

    @property
    def scheme(self) -> str:
        return "symmetric" if self.symmetric else "asymmetric"


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
    """Whether the C kernel takes this matrix: buffers on the CPU and the kernels built."""
    return m.qweight.device.type == "cpu" and kernels.available()


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

    def matmul_many(self, x: torch.Tensor, linears: tuple[nn.Module, ...]) -> list[torch.Tensor] | None:
        """``[m(x) for m in linears]`` in one kernel call when every one is a QuantizedLinear of this
        format taking the kernel for ``x`` (the attention's q/k/v, the MLP's gate/up: llmkit.models.layers'
        ``project``); None when they cannot share it. Equal to the separate calls, bit for bit."""
        same = all(
            type(m) is QuantizedLinear
            and (m.method, m.symmetric, m.group_size, m.in_features)
            == (self.method, self.symmetric, self.group_size, self.in_features)
            and m.takes_kernel(x)
            for m in linears
        )
        if not same:
            return None
        ys = kernels.quantized_mm(
            x, [m.qweight for m in linears], [m.scales for m in linears], [m.mins for m in linears],
            self.method, [m.out_features for m in linears], self.group_size,
        )  # fmt: skip
        return [y if m.bias is None else y + m.bias for y, m in zip(ys, linears, strict=True)]


class QuantizedEmbedding(QuantizedMatrix):
    """``nn.Embedding`` with quantized rows; a lookup dequantizes only the rows it reads, to the model's
    float dtype (``compute_dtype``: fp32, or what ``model.to(dtype)`` asked for)."""

    @classmethod
    def from_embedding(cls, table: nn.Embedding, spec: QuantSpec, empty: bool = False) -> QuantizedEmbedding:
        q = cls(table.num_embeddings, table.embedding_dim, spec)  # rows = out, width = in
        if not empty:
            q.quantize_(table.weight)
        return q.to(table.weight.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.dequantize(self.compute_dtype, rows=input_ids)  # (..., C)


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
    in float stays float (quantizing only the head would store the shared matrix twice). Each matrix
    takes ``spec.for_module(name)`` (the spec, or its override for that name; None keeps it in float).
    Norms, biases, position and token-type embeddings keep their dtype. ``empty=True`` only allocates the
    quantized buffers, for a loader to fill from a file.
    """
    if spec.is_cast:
        return model.to(spec.dtype)
    tables: dict[int, QuantizedEmbedding] = {}  # id of the float table's weight -> its quantized module
    for name, embed in [(n, m) for n, m in model.named_modules() if isinstance(m, Embeddings)]:
        chosen = spec.for_module(_join(name, "tokens"), table=True)
        if chosen is not None:
            weight = embed.tokens.weight
            embed.tokens = QuantizedEmbedding.from_embedding(embed.tokens, chosen, empty)
            tables[id(weight)] = embed.tokens
    float_tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for parent_name, parent, name, linear in _linears(model):
        chosen = spec.for_module(_join(parent_name, name))
        if id(linear.weight) in tables:
            setattr(parent, name, TiedQuantizedHead(tables[id(linear.weight)], linear.bias))
        elif id(linear.weight) not in float_tables and chosen is not None:
            setattr(parent, name, QuantizedLinear.from_linear(linear, chosen, empty))
    return model


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def _linears(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """(parent's name, parent, attribute, module) of every nn.Linear, collected before any is replaced."""
    return [
        (parent_name, parent, name, child)
        for parent_name, parent in model.named_modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]


def quantized_matrices(model: nn.Module) -> list[QuantizedMatrix]:
    return [m for m in model.modules() if isinstance(m, QuantizedMatrix)]


class Bf16Linear(nn.Linear):
    """``nn.Linear`` whose bf16 weight goes through the C kernel for inputs of few rows (decoding): the
    same module (parameters, state dict, tied weights) with another forward, set by ``use_bf16_kernels``.
    Inputs that need a gradient, other dtypes or devices, and many rows take ``F.linear``."""

    kernel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            self.kernel
            and w.dtype == torch.bfloat16
            and x.device.type == "cpu"
            and x.dtype in kernels.KERNEL_DTYPES
            and x.numel() // self.in_features <= BF16_KERNEL_MAX_ROWS
            and w.is_contiguous()
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            and not torch.is_autocast_enabled("cpu")
        ):
            out = kernels.bf16_mm(x, w)
            return out if self.bias is None else out + self.bias
        return F.linear(x, w, self.bias)


def use_bf16_kernels(model: nn.Module) -> nn.Module:
    """Give every plain ``nn.Linear`` of ``model`` with a bf16 weight on the CPU the kernel forward of
    ``Bf16Linear`` (where the C kernels are built). Returns ``model``."""
    if not kernels.available():
        return model
    for m in model.modules():
        if type(m) is nn.Linear and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu":
            m.__class__ = Bf16Linear  # same object and parameters: only forward changes
    return model


def use_kernels(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Run every quantized matrix of ``model`` through the C kernels where they take it, for inputs of
    few rows (``enabled=False``: the dequantize-then-``F.linear`` reference path everywhere, and
    ``F.linear`` for bf16 linears given the kernel). Returns ``model``."""
    for m in quantized_matrices(model):
        m.use_kernel(enabled)
    for m in model.modules():
        if isinstance(m, Bf16Linear):
            m.kernel = enabled
    return model
