"""KV cache: preallocated keys and values per layer, owned by the caller and passed to the model.

Decoding one token at a time re-reads every earlier key and value; caching them turns each step
from O(T) projections into O(1). Buffers are allocated once for ``max_len`` positions, so a step
writes in place and never reallocates (gpt-fast style). Encoder-decoder models also keep the
cross-attention keys and values of the encoder output, computed at the first step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError


class LayerCache:
    """Keys and values of one attention layer: (B, K, max_len, D) each, plus cross-attention's."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, dtype, device) -> None:
        self.k = torch.zeros(batch, n_kv_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.cross_k: torch.Tensor | None = None  # (B, K, S_enc, D), set at the first decoder step
        self.cross_v: torch.Tensor | None = None

    def write(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, K, T, D) at positions [start, start + T); return all keys/values so far."""
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, K, end, D)


class KVCache:
    """The cache of one causal stack (the decoder): one LayerCache per layer and the filled length."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype=torch.float32, device="cpu") -> None:
        n_layer = cfg.n_decoder_layer if cfg.family == "encoder_decoder" else cfg.n_layer
        if cfg.family == "encoder":
            raise LlmkitError("encoder-only models do not decode token by token", "use fill-mask instead")
        self.max_len = max_len
        self.length = 0  # positions filled, the same for every row (padding is masked, not skipped)
        self.layers = [LayerCache(batch_size, cfg.n_kv_head, max_len, cfg.head_dim, dtype, device)
                       for _ in range(n_layer)]  # fmt: skip

    @classmethod
    def for_model(cls, model: nn.Module, batch_size: int, max_len: int) -> KVCache:
        """A cache in the model's dtype and on its device."""
        param = next(model.parameters())
        return cls(model.config, batch_size, max_len, dtype=param.dtype, device=param.device)

    def check_room(self, new: int) -> None:
        if self.length + new > self.max_len:
            raise LlmkitError(
                f"KV cache holds {self.max_len} positions; {self.length} used, {new} more requested",
                "allocate a larger cache (max_len = prompt length + max_new_tokens)",
            )

    def first_rows(self, n: int) -> KVCache:
        """A cache over rows [0, n) sharing this one's buffers (its writes land here), at the same length.
        Continuous batching (inference/batcher.py) keeps the active rows first and runs only those."""
        view = copy.copy(self)
        view.layers = [copy.copy(layer) for layer in self.layers]
        for layer in view.layers:
            layer.k, layer.v = layer.k[:n], layer.v[:n]
        return view

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search picks which hypotheses continue)."""
        for layer in self.layers:
            layer.k, layer.v = layer.k.index_select(0, index), layer.v.index_select(0, index)
            if layer.cross_k is not None:
                layer.cross_k, layer.cross_v = (
                    layer.cross_k.index_select(0, index),
                    layer.cross_v.index_select(0, index),
                )
