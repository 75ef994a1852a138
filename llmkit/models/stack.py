"""Transformer blocks and a stack of them with its position handling: the core all families share."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmkit.config import ModelConfig
from llmkit.models.cache import KVCache
from llmkit.models.dropout import Dropout
from llmkit.models.layers import MLP, Attention, RelativePositionBias, Rotary, additive_mask, make_norm
from llmkit.models.packing import Packing

Weights = torch.Tensor | None


class _Select(NamedTuple):
    """The ``outputs`` shortcut: the wanted tokens' rows among those the last block is given, and the
    keyword arguments of its ``select``."""

    rows: torch.Tensor
    kwargs: dict[str, Any]


class _Pass(NamedTuple):
    """What one forward pass gives the blocks, prepared by ``Stack._prepare`` before the loop over them."""

    end: int  # positions filled after this pass (cached + new): the cache's next length
    packing: Packing | None  # the real tokens alone (training on a padded batch), else None
    block_kwargs: dict[str, Any]  # the same for every block: masks, rotary angles, memory, packing
    select: _Select | None  # the last block at the ``outputs`` tokens alone, else None


class PreNormBlock(nn.Module):
    """x + attn(norm x) [+ cross(norm x, memory)] + mlp(norm x): GPT-2, Llama, T5."""

    def __init__(self, cfg: ModelConfig, cross: bool) -> None:
        super().__init__()
        self.attn_norm, self.attn = make_norm(cfg), Attention(cfg)
        self.cross_norm = make_norm(cfg) if cross else None
        self.cross_attn = Attention(cfg) if cross else None
        self.mlp_norm, self.mlp = make_norm(cfg), MLP(cfg)
        self.drop = Dropout(cfg.dropout)

    def forward(
        self, x, *, attn_mask, is_causal, rope, memory, cross_attn_mask, need_weights, kv=None, past=0, packing=None
    ):
        h, weights = self.attn(
            self.attn_norm(x),
            attn_mask=attn_mask,
            is_causal=is_causal,
            rope=rope,
            need_weights=need_weights,
            kv=kv,
            past=past,
            packing=packing,
        )
        x = x + self.drop(h)
        cross_weights = None
        if self.cross_attn is not None:
            h, cross_weights = self.cross_attn(
                self.cross_norm(x), memory=memory, attn_mask=cross_attn_mask, need_weights=need_weights, kv=kv
            )
            x = x + self.drop(h)
        x = x + self.drop(self.mlp(self.mlp_norm(x)))
        return x, weights, cross_weights

    def select(self, x, rows, *, rows_of, attn_mask, rope):
        """The block's output at tokens ``rows`` alone (Stack's ``outputs``): x (M, C) -> (len(rows), C)."""
        h = self.attn.select(self.attn_norm(x), rows, rows_of=rows_of, attn_mask=attn_mask, rope=rope)
        y = x.index_select(0, rows) + self.drop(h)
        return y + self.drop(self.mlp(self.mlp_norm(y)))


class PostNormBlock(nn.Module):
    """norm(x + attn x) [-> norm(x + cross(x, memory))] -> norm(x + mlp x): BERT, original Transformer."""

    def __init__(self, cfg: ModelConfig, cross: bool) -> None:
        super().__init__()
        self.attn, self.attn_norm = Attention(cfg), make_norm(cfg)
        self.cross_attn = Attention(cfg) if cross else None
        self.cross_norm = make_norm(cfg) if cross else None
        self.mlp, self.mlp_norm = MLP(cfg), make_norm(cfg)
        self.drop = Dropout(cfg.dropout)

    def forward(
        self, x, *, attn_mask, is_causal, rope, memory, cross_attn_mask, need_weights, kv=None, past=0, packing=None
    ):
        h, weights = self.attn(
            x,
            attn_mask=attn_mask,
            is_causal=is_causal,
            rope=rope,
            need_weights=need_weights,
            kv=kv,
            past=past,
            packing=packing,
        )
        x = self.attn_norm(x + self.drop(h))
        cross_weights = None
        if self.cross_attn is not None:
            h, cross_weights = self.cross_attn(
                x, memory=memory, attn_mask=cross_attn_mask, need_weights=need_weights, kv=kv
            )
            x = self.cross_norm(x + self.drop(h))
        x = self.mlp_norm(x + self.drop(self.mlp(x)))
        return x, weights, cross_weights

    def select(self, x, rows, *, rows_of, attn_mask, rope):
        """The block's output at tokens ``rows`` alone (Stack's ``outputs``): x (M, C) -> (len(rows), C)."""
        h = self.attn.select(x, rows, rows_of=rows_of, attn_mask=attn_mask, rope=rope)
        y = self.attn_norm(x.index_select(0, rows) + self.drop(h))
        return self.mlp_norm(y + self.drop(self.mlp(y)))


class Stack(nn.Module):
    """Blocks plus what positions need inside attention (RoPE angles, T5 relative bias) and the
    final norm of pre-norm models. Embeddings live outside: T5 shares one between two stacks."""

    def __init__(self, cfg: ModelConfig, n_layer: int, *, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.rope = Rotary(cfg.head_dim, cfg.rope_theta) if cfg.pos == "rope" else None
        # T5 computes the bias in the first layer and shares it with the others: one table per stack
        self.rel_bias = RelativePositionBias(cfg, bidirectional=not causal) if cfg.pos == "relative" else None
        block = PreNormBlock if cfg.norm_placement == "pre" else PostNormBlock
        self.layers = nn.ModuleList(block(cfg, cross) for _ in range(n_layer))
        self.final_norm = make_norm(cfg) if cfg.norm_placement == "pre" else nn.Identity()
        self.drop = Dropout(cfg.dropout)
        # Training switch (set_activation_checkpointing): recompute each block's activations in
        # backward instead of storing them.
        self.activation_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        cache: KVCache | None = None,
        outputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[Weights, ...], tuple[Weights, ...]]:
        """x (B, T, C) -> (hidden (B, T, C), self-attention weights, cross-attention weights).

        With a ``cache`` the T new positions follow the ``cache.length`` cached ones, and
        ``attention_mask`` (B, cache.length + T) covers all of them; the cache advances by T.

        ``outputs`` (B,), one position per row: only those states are wanted (a sequence head reads
        one token), and hidden is (B, 1, C). The last block then computes its queries, output
        projection, MLP and norms at those B tokens alone (its keys and values still at every token):
        about five sixths of the last block's work spared, the same values at those positions.
        """
        run = self._prepare(x, attention_mask, position_ids, memory, memory_mask, output_attentions, cache, outputs)
        x = self.drop(run.packing.pack(x) if run.packing is not None else x)  # packed: (N, C)
        attentions, cross_attentions = [], []
        for i, layer in enumerate(self.layers[:-1] if run.select is not None else self.layers):
            kv = cache.layers[i] if cache is not None else None
            x, w, cw = self._call(layer, x, kv=kv, **run.block_kwargs)
            attentions.append(w)
            cross_attentions.append(cw)
        if run.select is not None:  # the last block at the ``outputs`` tokens alone: (B, C)
            x = self._last_block_at_outputs(x, run)
            attentions.append(None)
            cross_attentions.append(None)
        if cache is not None:
            cache.length = run.end
        x = self.drop(self.final_norm(x))
        return self._hidden(x, run, outputs), tuple(attentions), tuple(cross_attentions)

    def _prepare(
        self, x, attention_mask, position_ids, memory, memory_mask, output_attentions, cache, outputs
    ) -> _Pass:
        """What every block is given, prepared once before the loop: the positions (after the cached ones), the
        packing of a padded training batch, the attention masks and rotary angles (per token when packed), the
        cross-attention mask, and the rows of the ``outputs`` shortcut."""
        B, T, _ = x.shape
        past = self._past(cache, T)
        packing = self._packing(attention_mask, cache, memory, output_attentions)
        rope = self._rotary(position_ids, past, past + T, x.device)
        attn_mask = None  # the packed groups carry their own masks
        if packing is None:
            attn_mask = self._scores_mask(attention_mask, T, past + T, past, output_attentions, x.dtype, x.device)
        else:
            packing, rope = self._pack_attention(packing, rope, B, x.dtype, x.device)
        # one query (a decoding step) sees every key anyway; testing T first keeps is_causal a plain
        # bool when ``past`` is symbolic under torch.compile (SDPA rejects a SymBool)
        is_causal = self.causal and T > 1 and past == 0
        block_kwargs = dict(
            attn_mask=attn_mask, is_causal=is_causal, rope=rope, memory=memory, need_weights=output_attentions,
            cross_attn_mask=self._cross_mask(memory, memory_mask, T, x.dtype, x.device), past=past, packing=packing,
        )  # fmt: skip
        select = None
        if outputs is not None and cache is None and memory is None and not output_attentions and self.layers:
            select = self._selection(outputs, attention_mask, packing, B, T, rope, x.dtype, x.device)
        return _Pass(past + T, packing, block_kwargs, select)

    @staticmethod
    def _past(cache: KVCache | None, T: int) -> int:
        """How many positions come before these T: the cache's filled length (checked to have room for T
        more), or 0 without a cache."""
        if cache is None:
            return 0
        cache.check_room(T)
        return cache.length

    def _packing(self, attention_mask, cache, memory, output_attentions: bool) -> Packing | None:
        """Where the real tokens are, when the blocks run on them alone; else None. Training on padded
        batches runs the blocks on the real tokens alone (Packing); evaluation keeps the padded layout,
        so every position's output (padding too) matches transformers'."""
        if self.training and attention_mask is not None and cache is None and memory is None and not output_attentions:
            return Packing.of(attention_mask)
        return None

    def _rotary(self, position_ids, start, end, device: torch.device):
        """RoPE's (cos, sin) at ``position_ids`` (default: start..end-1 for every row), or None without RoPE."""
        if self.rope is None:
            return None
        if position_ids is None:
            position_ids = torch.arange(start, end, device=device)[None]
        return self.rope(position_ids)

    def _pack_attention(self, packing: Packing, rope, B: int, dtype: torch.dtype, device: torch.device):
        """``packing`` with each attention group's mask, and the rotary angles per real token: (N, 1, D) each."""
        # a group's rows start at position 0 with no cache: its own padding, causality and bias
        packing = packing.with_masks(
            lambda g: self._scores_mask(g.mask if g.padded else None, g.shape[1], g.shape[1], 0, False, dtype, device),
            self.causal,
        )
        if rope is not None:
            rope = tuple(packing.pack(r[:, 0].expand(B, -1, -1))[:, None] for r in rope)
        return packing, rope

    @staticmethod
    def _cross_mask(memory, memory_mask, T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """The additive mask of cross-attention over ``memory``'s padding (T5's decoder), or None."""
        if memory is None:
            return None
        return additive_mask(memory_mask, T, memory.shape[1], False, dtype, device)

    def _call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``; when checkpointing a training pass, its activations recomputed in backward."""
        if self.activation_checkpointing and self.training:
            return checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)

    def _last_block_at_outputs(self, x: torch.Tensor, run: _Pass) -> torch.Tensor:
        """The last block at the ``outputs`` tokens alone, from every token's state: (B, C)."""
        flat = x if run.packing is not None else x.flatten(0, 1)  # (N or B * T, C)
        return self._call(self.layers[-1].select, flat, run.select.rows, **run.select.kwargs)

    @staticmethod
    def _hidden(x: torch.Tensor, run: _Pass, outputs: torch.Tensor | None) -> torch.Tensor:
        """The final states in the caller's layout: (B, 1, C) at ``outputs`` when given, else (B, T, C) (a
        packed pass scattered back, zeros at padding)."""
        if run.select is not None:  # computed at the outputs alone
            return x[:, None]
        if run.packing is not None:
            x = run.packing.unpack(x)  # (B, T, C), zeros at padding
        if outputs is not None:
            x = x[torch.arange(x.shape[0], device=x.device), outputs][:, None]
        return x

    def _selection(self, outputs, attention_mask, packing, B: int, T: int, rope, dtype, device) -> _Select | None:
        """What the last block needs to compute only the ``outputs`` positions: their rows among the
        tokens it is given ((N, C) packed, else (B * T, C)) and its keyword arguments; None when the
        shortcut does not apply (T5's relative bias needs every query's position; a wanted position
        that is padding has no packed row)."""
        if self.rel_bias is not None:
            return None
        flat = torch.arange(B, device=device) * T + outputs  # (B,) positions in the (B * T) layout
        if attention_mask is not None and not bool(attention_mask.reshape(-1)[flat].all()):
            return None
        mask = additive_mask(attention_mask, T, T, self.causal, dtype, device)  # (B or 1, 1, T, T)
        if mask is not None:  # each row's wanted query: (B, 1, 1, T)
            mask = mask.expand(B, -1, -1, -1)[torch.arange(B, device=device), :, outputs][:, :, None]
        if packing is not None:
            rows = torch.searchsorted(packing.index, flat)  # the wanted tokens among the N real ones
            rows_of = packing.unpack
        else:
            rows = flat
            rows_of = lambda t: t.view(B, T, *t.shape[1:])  # noqa: E731
            if rope is not None:  # per token, as packed rope is: (B * T, 1, D) each
                rope = tuple(r[:, 0].expand(B, -1, -1).reshape(B * T, 1, -1) for r in rope)
        return _Select(rows, dict(rows_of=rows_of, attn_mask=mask, rope=rope))

    def _scores_mask(
        self, attention_mask, T: int, S: int, past: int, explicit: bool, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor | None:
        """The additive mask on the attention scores (B or 1, H or 1, T, S): padding and causality, plus
        T5's relative bias; None when SDPA needs none (causality then goes by its is_causal). A dense
        mask is needed for padding, the ``explicit`` path (attention weights), the relative bias, and
        several new queries over cached keys (SDPA's is_causal aligns the triangle top-left, not
        bottom-right)."""
        mask = None
        if attention_mask is not None or explicit or self.rel_bias is not None or (T > 1 and past > 0):
            mask = additive_mask(attention_mask, T, S, self.causal, dtype, device)
        if self.rel_bias is not None:
            rel = self.rel_bias(T, S, q_offset=past).to(dtype)  # (1, H, T, S)
            mask = rel if mask is None else mask + rel
        return mask
