"""Building blocks shared by the three families: norms, MLPs, attention, positions, masks.

Shapes: B batch, T query length, S key length, H heads, K key/value heads, D head dim, C d_model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import ModelConfig
from llmkit.models.cache import LayerCache
from llmkit.models.dropout import Dropout
from llmkit.models.packing import Packing


# ---- norms ----------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Llama's RMSNorm and T5's LayerNorm (the same thing): no mean subtraction, no bias, fp32 math."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


# ---- feed-forward ---------------------------------------------------------------------------
ACTIVATIONS = {
    "gelu": nn.GELU(),  # exact erf GELU (BERT)
    "gelu_tanh": nn.GELU(approximate="tanh"),  # GPT-2's gelu_new, T5 v1.1's gated-gelu
    "relu": nn.ReLU(),  # T5 v1.0
    "silu": nn.SiLU(),  # Llama's SwiGLU gate
}


def project(x: torch.Tensor, *linears: nn.Module) -> list[torch.Tensor]:
    """``[m(x) for m in linears]``: several projections of the same input (q/k/v, gate/up). A layer type
    that can run them in one call says so with ``matmul_many(x, linears)`` (llmkit.quantize's
    QuantizedLinear: one C kernel call instead of three, for decoding steps), returning None when it
    cannot; plain layers run one by one."""
    many = getattr(linears[0], "matmul_many", None)
    out = many(x, linears) if many is not None else None
    return out if out is not None else [m(x) for m in linears]


class MLP(nn.Module):
    """Standard: down(act(up x)); gated (SwiGLU, GEGLU): down(act(gate x) * up x)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.mlp == "gated"
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias) if self.gated else None
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = project(x, self.gate, self.up)
            h = self.act(gate) * up
        else:
            h = self.act(self.up(x))
        return self.down(h)


# ---- positions ------------------------------------------------------------------------------
def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """Vaswani et al. 2017, sec. 3.5: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) in the rotate-half layout Hugging Face Llama uses."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return emb.cos()[:, None], emb.sin()[:, None]  # (B, 1, T, D) each


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos.to(x.dtype)) + (_rotate_half(x) * sin.to(x.dtype))


class RelativePositionBias(nn.Module):
    """T5's learned bias per (head, bucket of key - query distance), added to the attention scores.

    Buckets: half exact for short distances, half log-spaced up to ``max_distance``; bidirectional
    stacks (encoder) split them by sign, causal stacks (decoder) only look back.
    """

    def __init__(self, cfg: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = cfg.rel_buckets
        self.max_distance = cfg.rel_max_distance
        self.embedding = nn.Embedding(cfg.rel_buckets, cfg.n_head)

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        buckets = torch.zeros_like(relative)
        n = self.num_buckets
        if self.bidirectional:
            n //= 2
            buckets += (relative > 0).long() * n
            relative = relative.abs()
        else:
            relative = -torch.clamp(relative, max=0)
        max_exact = n // 2
        # log-spaced buckets for distances in [max_exact, max_distance); clamp keeps log(0) away
        log_ratio = torch.log(relative.float().clamp(min=1) / max_exact) / math.log(self.max_distance / max_exact)
        large = (max_exact + (log_ratio * (n - max_exact)).long()).clamp(max=n - 1)
        return buckets + torch.where(relative < max_exact, relative, large)

    def forward(self, q_len: int, k_len: int, q_offset: int = 0) -> torch.Tensor:
        device = self.embedding.weight.device
        q_pos = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        values = self.embedding(self.bucket(k_pos - q_pos))  # (T, S, H)
        return values.permute(2, 0, 1)[None]  # (1, H, T, S)


# ---- masks ----------------------------------------------------------------------------------
def additive_mask(
    attention_mask: torch.Tensor | None,
    q_len: int,
    k_len: int,
    causal: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Additive mask (B or 1, 1, T, S), added to the attention scores: 0 where a query may attend, the
    dtype's minimum elsewhere.

    ``attention_mask`` is (B, S) with 1 for real tokens and 0 for padding. The minimum (not -inf)
    keeps fully masked rows (padding queries) finite, as transformers does.
    """
    if attention_mask is None and not causal:
        return None
    allowed = torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    if causal:  # query i sits at key position i + (S - T) when earlier keys are cached
        allowed = allowed.tril(diagonal=k_len - q_len)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].to(device=device, dtype=torch.bool)
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


# ---- attention ------------------------------------------------------------------------------
# Keys up to which training on the CPU writes attention out (Attention._attend); train/step.py restricts
# SDPA to its math kernel up to the same bound (CPU_MATH_ATTENTION_MAX_LEN), the kernel this path replaces.
EXPLICIT_ATTENTION_MAX_LEN = 128


class Attention(nn.Module):
    """Multi-head (or grouped-query) attention; self-attention, or cross-attention over ``memory``.

    The fast path is ``F.scaled_dot_product_attention``; ``need_weights`` takes the explicit
    softmax(scale * Q K^T + attn_mask) path and returns the weights (B, H, T, S). ``attn_mask`` is
    additive (as SDPA's float masks): padding and causality, plus T5's relative position bias.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        inner, kv_inner = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        qkv_bias = cfg.bias or cfg.qkv_bias  # Qwen2: biases on q/k/v, none on o or the MLP
        self.q = nn.Linear(cfg.d_model, inner, bias=qkv_bias)
        self.k = nn.Linear(cfg.d_model, kv_inner, bias=qkv_bias)
        self.v = nn.Linear(cfg.d_model, kv_inner, bias=qkv_bias)
        self.o = nn.Linear(inner, cfg.d_model, bias=cfg.bias)
        self.scale = cfg.head_dim**-0.5 if cfg.scale_attn else 1.0  # T5: no scaling, init folds it in
        self.dropout = cfg.dropout
        self.attn_drop = Dropout(cfg.dropout)  # the weights' dropout where _attend writes attention out

    def forward(
        self,
        x: torch.Tensor,
        *,
        memory: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        need_weights: bool = False,
        kv: LayerCache | None = None,
        past: int = 0,
        packing: Packing | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) -> (B, T, C) and the weights (B, H, T, S) when ``need_weights``.

        With a cache ``kv``: self-attention writes this step's keys/values at [past, past + T) and
        attends over all cached ones; cross-attention projects ``memory`` once and reuses it.
        With a ``packing`` x is the batch's real tokens (N, C): the projections run on them, and
        the heads are scattered into (B, T) for attention and gathered back (N, C) after it.
        """
        if packing is not None:
            if memory is not None:
                raise ValueError("packed attention is self-attention only")  # Stack packs only without memory
            return self._packed(x, rope, packing), None
        B, T, _ = x.shape
        if memory is None:  # self-attention: q, k and v read x (one call where the layers can share it)
            q, k, v = project(x, self.q, self.k, self.v)
            k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
            v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        else:
            q = self.q(x)
            if kv is not None and kv.cross_k is not None:
                k, v = kv.cross_k, kv.cross_v  # (B, K, S, D), from the first step
            else:
                k, v = self._project_kv(memory)  # (B, K, S, D)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if kv is not None and memory is None:
            k, v = kv.write(past, k, v)  # (B, K, past + T, D)
        elif kv is not None:
            kv.cross_k, kv.cross_v = k, v
        if need_weights:
            y, weights = self._explicit(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        else:
            # the packed groups' path too: a training batch without padding (not packed; length-grouped
            # batches often have one length) gets the fast dropout mask. is_causal implies past == 0
            # (Stack), so its triangle is square as _attend's written-out path assumes.
            y, weights = self._attend(q, k, v, attn_mask, is_causal and attn_mask is None), None  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H*D)
        return self.o(y), weights

    def _packed(self, x: torch.Tensor, rope, packing: Packing) -> torch.Tensor:
        """Self-attention over the real tokens x (N, C), group by group (models/packing.py); rope
        is per token, (N, 1, D) each."""
        N = x.shape[0]
        q = self.q(x).view(N, self.n_head, self.head_dim)
        k = self.k(x).view(N, self.n_kv_head, self.head_dim)
        v = self.v(x).view(N, self.n_kv_head, self.head_dim)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        ys = []
        for group, qg, kg, vg in zip(packing.groups, *map(packing.to_groups, (q, k, v)), strict=True):
            ys.append(self._attend(qg, kg, vg, group.attn_mask, group.attn_mask is None and packing.causal))
        return self.o(packing.from_groups(ys))

    def _attend(self, q, k, v, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        """Scaled-dot-product attention (B, H, T, D) of every path but the weights-returning one.

        Training on the CPU with dropout at up to ``EXPLICIT_ATTENTION_MAX_LEN`` keys (where training
        uses SDPA's math kernel anyway, train/step.py) the same math is written out, as transformers'
        eager attention does: softmax(scale * Q K^T + mask), ``Dropout``'s fast mask, times V. SDPA's
        math kernel draws its dropout mask with torch's CPU bernoulli, 5x slower: measured on a MiniLM
        SST-2 step, 5% of the step. Elsewhere, SDPA."""
        dropout = self.dropout if self.training else 0.0
        if dropout == 0.0 or q.device.type != "cpu" or k.shape[-2] > EXPLICIT_ATTENTION_MAX_LEN:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal, scale=self.scale,
                enable_gqa=self.n_kv_head != self.n_head,
            )  # fmt: skip
        if self.n_kv_head != self.n_head:
            groups = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, S)
        if attn_mask is not None:
            scores = scores + attn_mask
        elif is_causal:  # no cache on these paths: T == S
            T = q.shape[-2]
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        return self.attn_drop(torch.softmax(scores, dim=-1)) @ v

    def select(self, x: torch.Tensor, rows: torch.Tensor, *, rows_of, attn_mask, rope) -> torch.Tensor:
        """Self-attention outputs at tokens ``rows`` alone: x (M, C) holds the batch's tokens (packed
        or flattened), ``rows`` (B,) one query token per row of the batch, ``rows_of`` lays a (M, ...)
        tensor out as (B, T, ...) for the keys, ``attn_mask`` (B, 1, 1, T) is each query's additive
        mask and ``rope`` per token ((M, 1, D) each). -> (B, C)."""
        B = rows.shape[0]
        q = self.q(x.index_select(0, rows)).view(B, self.n_head, self.head_dim)
        k = self.k(x).view(-1, self.n_kv_head, self.head_dim)
        v = self.v(x).view(-1, self.n_kv_head, self.head_dim)
        if rope is not None:
            q = apply_rotary(q, *(r.index_select(0, rows) for r in rope))
            k = apply_rotary(k, *rope)
        k, v = rows_of(k).transpose(1, 2), rows_of(v).transpose(1, 2)  # (B, K, T, D)
        y = self._attend(q[:, :, None], k, v, attn_mask, False)  # (B, H, 1, D)
        return self.o(y.reshape(B, self.n_head * self.head_dim))

    def _project_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _ = src.shape
        k = self.k(src).view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, S, D)
        v = self.v(src).view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, S, D)
        return k, v

    def _explicit(self, q, k, v, attn_mask, dropout):
        """Reference path: the weights a user can draw, softmax in fp32 as transformers does."""
        groups = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, H, S, D)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, S)
        if attn_mask is not None:
            scores = scores + attn_mask
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        y = F.dropout(weights, p=dropout) @ v  # (B, H, T, D)
        return y, weights
