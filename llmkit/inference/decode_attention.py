"""Attention of a decoding step (one query per row) on the CPU as two batched matmuls, for the server's batcher.

torch's CPU ``scaled_dot_product_attention`` (2.13) is slow on bf16 for one query per row: 64 rows, SmolLM2's
9 heads over 3 key heads, 100 keys, one thread of an AMD EPYC (2026-12-07), 9.5 ms a layer, and a batch-64
step of SmolLM2 in bf16 spent 60% of its time there (profiled). As grouped matmuls in fp32 the whole step
took 334 ms of CPU instead of 530 (300 keys: 590 instead of 933); at 16 rows 116 instead of 135. In fp32
torch's kernel is the faster one (428 against 491 ms at 64 rows), and at one row the mode's own overhead (a
Python call per torch call: 2346 calls, 6.5 ms a step of SmolLM2) costs more than it saves: the batcher
enters it for reduced precision models at 8 rows or more.

``one_query_attention`` is that arithmetic: the query heads of a group share their key head (no copy of the
keys per head), scores and softmax in fp32 whatever the weights' dtype (as SDPA's kernels accumulate), the
additive mask broadcast over heads. ``OneQueryAttention`` is a torch function mode that sends the SDPA calls
of one-query, CPU, dropout-free attention to it while the batcher runs the model, and leaves every other call
(prefill, training, GPUs) to torch; the model's own code is not touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def one_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(scale * q k^T + attn_mask) v for q (B, H, 1, D), k and v (B, K, S, D), H a multiple of K;
    attn_mask additive, broadcastable to (B, H, 1, S). -> (B, H, 1, D) in q's dtype."""
    B, H, _, D = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    scale = D**-0.5 if scale is None else scale
    qg = q.reshape(B, K, G, D).float()  # heads h = kv * G + g share key head kv (as enable_gqa)
    scores = torch.matmul(qg, k.float().transpose(-1, -2)) * scale  # (B, K, G, S)
    if attn_mask is not None:
        mask = attn_mask.float()
        if mask.dim() == 4 and mask.shape[1] == H:
            mask = mask.reshape(mask.shape[0], K, G, S)  # per-head masks: follow the heads' grouping
        else:
            mask = mask.reshape(mask.shape[0], 1, 1, S)  # (B or 1, 1, 1, S): the same for every head
        scores = scores + mask
    out = torch.matmul(scores.softmax(-1), v.float())  # (B, K, G, D)
    return out.reshape(B, H, 1, D).to(q.dtype)


class OneQueryAttention(TorchFunctionMode):
    """``with OneQueryAttention(): model(...)``: SDPA calls with one query, on the CPU, without dropout or
    ``is_causal`` (one query sees every key), go to ``one_query_attention``; all others run as called."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            if (
                q.device.type == "cpu" and q.dim() == 4 and q.shape[-2] == 1 and not kwargs.get("dropout_p")
                and not kwargs.get("is_causal") and len(args) == 3 and q.shape[1] % k.shape[1] == 0
            ):  # fmt: skip
                return one_query_attention(q, k, v, kwargs.get("attn_mask"), kwargs.get("scale"))
        return func(*args, **kwargs)
