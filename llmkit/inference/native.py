"""The native decoding step: one token of one sequence through a Llama-family model in one C call
(llmkit/cpu_decode.c), for batch-1 generation on the CPU.

Why: with the matrix products in C, most of what is left of a torch decoding step of a small model is
Python (SmolLM2-135M int4, compiled: 19 ms a token, 10.8 of them in the kernels; the rest dynamo's guards,
the compiled graph's wrapper, the kernels' own Python and ctypes, attention). The C step does the same
arithmetic with the same kernels and no Python between them. docs/benchmarks.md has the figures.

Where it runs: ``native_step(model, cache, rows, padded)`` returns a ``NativeStep`` when the model is one
this code computes exactly, else None and the torch step (eager or compiled) runs. Exactly means: a
``DecoderLM`` with RoPE, pre-norm RMSNorm, a SwiGLU MLP and no biases but Qwen2's on q/k/v, every module
of the types below (so LoRA wrappers, hooks and other layers keep the torch path), weights fp32, bf16, int8
or int4 on the CPU, the C kernels built, one row without padding, an fp32 or bf16 cache, and not training
with dropout. The prompt still runs through the torch forward (BLAS is faster for many rows); the steps
after it read and extend that same KV cache, so the two paths mix freely.

Values: fp32 arithmetic with the stored weights; for fp32, int8 and int4 models the torch step's values
up to summation order (~1e-6). A bf16 model's torch step rounds every activation to bf16; this one keeps
them in fp32 (as llama.cpp does with f16 weights) and rounds only what it writes to the bf16 cache.
``LLMKIT_NATIVE_STEP=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os

import torch
from torch import nn

from llmkit import cpu_kernels
from llmkit.models.cache import KVCache
from llmkit.models.decoder import DecoderLM
from llmkit.models.dropout import Dropout
from llmkit.models.embeddings import Embeddings
from llmkit.models.layers import MLP, Attention, RMSNorm, Rotary
from llmkit.models.stack import PreNormBlock, Stack
from llmkit.quantize.layers import Bf16Linear, QuantizedEmbedding, QuantizedLinear, TiedQuantizedHead

ENV_SWITCH = "LLMKIT_NATIVE_STEP"  # "0": always the torch step

_KINDS = {torch.float32: 32, torch.bfloat16: 16}
# every module type a model may contain for the C step to compute it exactly; anything else keeps torch
_ALLOWED = (
    DecoderLM, Embeddings, Stack, PreNormBlock, Attention, MLP, RMSNorm, Rotary, Dropout, nn.ModuleList, nn.SiLU,
    nn.Identity, nn.Embedding, nn.Linear, Bf16Linear, QuantizedLinear, QuantizedEmbedding, TiedQuantizedHead,
)  # fmt: skip


class _Matrix(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int64), ("out", ctypes.c_int64), ("in_", ctypes.c_int64), ("group", ctypes.c_int64),
        ("w", ctypes.c_void_p), ("scales", ctypes.c_void_p), ("mins", ctypes.c_void_p), ("bias", ctypes.c_void_p),
    ]  # fmt: skip


class _Layer(ctypes.Structure):
    _fields_ = [
        ("attn_norm", ctypes.c_void_p), ("mlp_norm", ctypes.c_void_p),
        *((name, _Matrix) for name in ("q", "k", "v", "o", "gate", "up", "down")),
        ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p),
    ]  # fmt: skip


class _Model(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_int64) for name in ("n_layer", "d_model", "n_head", "n_kv_head", "head_dim", "max_len")),
        ("cache_bf16", ctypes.c_int64), ("norm_eps", ctypes.c_float), ("attn_scale", ctypes.c_float),
        ("inv_freq", ctypes.c_void_p), ("embed", _Matrix), ("final_norm", ctypes.c_void_p), ("head", _Matrix),
        ("layers", ctypes.POINTER(_Layer)),
    ]  # fmt: skip


def _library() -> ctypes.CDLL | None:
    lib = cpu_kernels.library()
    if lib is not None and lib.llmkit_decode_step.argtypes is None:
        lib.llmkit_decode_step.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        lib.llmkit_decode_step.restype = ctypes.c_int
    return lib


def unsupported(model: nn.Module, rows: int, padded: bool) -> str | None:
    """Why the C step cannot run a generation of ``rows`` prompts (``padded``: of unequal lengths) with
    ``model`` (a short phrase), or None when it can. Its cache (``KVCache.for_model``) takes the dtype of the
    model's parameters, which this requires to be fp32 or bf16."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    if _library() is None:
        return f"no C kernels ({cpu_kernels.reason()})"
    if type(model) is not DecoderLM:
        return "not a decoder-only llmkit model"
    cfg = model.config
    shape = (cfg.pos, cfg.norm, cfg.norm_placement, cfg.mlp, cfg.activation, cfg.decoder_head)
    if shape != ("rope", "rmsnorm", "pre", "gated", "silu", "lm") or cfg.bias:
        return "not a Llama-family architecture (RoPE, pre-norm RMSNorm, SwiGLU, no biases but q/k/v)"
    if rows != 1 or padded:
        return "more than one row"
    if model.training and cfg.dropout > 0:
        return "training mode with dropout"
    for name, module in model.named_modules():
        if type(module) not in _ALLOWED:
            return f"module {name or 'model'} is a {type(module).__name__}"
        if module._forward_hooks or module._forward_pre_hooks:
            return f"module {name or 'model'} has hooks"
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return "global module hooks"
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        return "not on the CPU"
    if any(t.dtype not in _KINDS for t in model.parameters()):
        return "weights other than fp32, bf16, int8 and int4"
    return None


class NativeStep:
    """The C step bound to one model and one cache: ``step(token)`` -> next-token logits (1, V) fp32, the
    cache advanced by one. Holds fp32 copies of the small tensors (norms, biases, RoPE frequencies) and
    pointers to the model's own weights, which must stay where they are for the generation."""

    def __init__(self, model: DecoderLM, cache: KVCache) -> None:
        if cache.layers[0].k.dtype not in _KINDS or not all(kv.k.is_contiguous() for kv in cache.layers):
            raise ValueError("the native step needs a contiguous fp32 or bf16 cache")
        self.model, self.cache = model, cache
        self._keep: list[torch.Tensor] = []  # tensors whose memory the C structs point to
        cfg, stack = model.config, model.stack
        layers = (_Layer * len(stack.layers))()
        for layer_struct, block, kv in zip(layers, stack.layers, cache.layers, strict=True):
            layer_struct.attn_norm, layer_struct.mlp_norm = (
                self._f32(block.attn_norm.weight),
                self._f32(block.mlp_norm.weight),
            )
            attn, mlp = block.attn, block.mlp
            for name, module in (("q", attn.q), ("k", attn.k), ("v", attn.v), ("o", attn.o),
                                 ("gate", mlp.gate), ("up", mlp.up), ("down", mlp.down)):  # fmt: skip
                setattr(layer_struct, name, self._matrix(module))
            layer_struct.k_cache, layer_struct.v_cache = kv.k.data_ptr(), kv.v.data_ptr()
        first = stack.layers[0].attn
        self._layers = layers
        self._struct = _Model(
            n_layer=len(stack.layers), d_model=cfg.d_model, n_head=first.n_head, n_kv_head=first.n_kv_head,
            head_dim=first.head_dim, max_len=cache.max_len, cache_bf16=int(cache.layers[0].k.dtype == torch.bfloat16),
            norm_eps=stack.final_norm.eps, attn_scale=first.scale, inv_freq=self._f32(stack.rope.inv_freq),
            embed=self._matrix(model.embed.tokens), final_norm=self._f32(stack.final_norm.weight),
            head=self._matrix(model.lm_head), layers=ctypes.cast(layers, ctypes.POINTER(_Layer)),
        )  # fmt: skip
        self._logits = torch.empty(1, cfg.vocab_size)

    def _f32(self, t: torch.Tensor | None) -> int | None:
        if t is None:
            return None
        t = t.detach().float().contiguous()
        self._keep.append(t)
        return t.data_ptr()

    def _matrix(self, module: nn.Module) -> _Matrix:
        bias = getattr(module, "bias", None)
        if isinstance(module, TiedQuantizedHead):  # the table's matrix, the head's own bias
            module = module.table
        if isinstance(module, (QuantizedLinear, QuantizedEmbedding)):
            q = module.qweight
            return _Matrix(
                kind=4 if module.method == "int4" else 8, out=module.out_features, in_=module.in_features,
                group=module.group_size, w=q.data_ptr(), scales=module.scales.data_ptr(),
                mins=None if module.mins is None else module.mins.data_ptr(), bias=self._f32(bias),
            )  # fmt: skip
        w = module.weight.detach()
        if not w.is_contiguous():  # eager decoding lays some fp32 weights out column-major
            w = w.contiguous()
            self._keep.append(w)
        return _Matrix(
            kind=_KINDS[w.dtype], out=w.shape[0], in_=w.shape[1], group=0, w=w.data_ptr(), bias=self._f32(bias)
        )

    def step(self, token: int) -> torch.Tensor:
        """The logits (1, V) after ``token`` at the cache's next position; the cache grows by one."""
        cache = self.cache
        cache.check_room(1)
        if token < 0 or token >= self.model.config.vocab_size:
            raise ValueError(f"token id {token} outside the vocabulary")
        status = _library().llmkit_decode_step(
            ctypes.addressof(self._struct), token, cache.length, self._logits.data_ptr(), torch.get_num_threads()
        )
        if status:
            raise MemoryError("the native decoding step could not allocate its work memory")
        cache.length += 1
        return self._logits.clone()
