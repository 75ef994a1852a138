"""One decoding step of a model, behind the same three calls for both families that decode.

``prefill()`` runs the prompt and returns the logits of each row's next token; ``step(tokens)``
feeds one new token per row; ``reorder(index)`` keeps cache rows for beam search. The KV cache is
allocated once for the prompt plus all new tokens (gpt-fast style), so a step never reallocates.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.models.cache import KVCache


@torch.no_grad()
def use_decode_layout(model: nn.Module) -> None:
    """Store CPU ``nn.Linear`` weights (out, in) with out >= in column-major: the transpose of a contiguous
    (in, out) matrix, as GPT-2's Conv1D stores it. Values, shapes, names and tied weights stay as they are
    (the Parameter objects are kept, only their memory layout changes), so saving, loading and training
    see no difference.

    Why: a decoding step multiplies one row by each weight, and MKL streams a square or widening matrix
    (the lm head, QKV, the MLP's up projection) from memory 1.2-1.8x faster as (in, out); a narrowing one
    (the MLP's down projection) is faster as it is. Measured on a 1-thread AMD EPYC: GPT-2 small's head
    13 -> 23 GB/s. Idempotent: weights already laid out so are skipped.
    """
    for module in model.modules():
        w = module.weight if isinstance(module, nn.Linear) else None
        if w is not None and w.device.type == "cpu" and w.dim() == 2 and w.is_contiguous() and w.shape[0] >= w.shape[1]:
            w.data = w.data.t().contiguous().t()


class DecoderRunner:
    """GPT-2 / Llama. Left-padded rows get an attention mask over past + new tokens and positions
    counted from each row's first real token, ``(mask.cumsum(-1) - 1).clamp(min=0)``, as
    transformers' generate does; a batch without padding passes neither (cheaper steps)."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, max_new: int) -> None:
        device = next(model.parameters()).device
        self.model, self.ids = model, ids.to(device)
        self.rows, prompt_len = ids.shape
        self.cache = KVCache.for_model(model, self.rows, prompt_len + max_new)
        self.padded = not bool(mask.all())
        if self.padded:
            full = torch.cat([mask, mask.new_ones(self.rows, max_new)], dim=1).to(device)  # (R, T + new)
            self.mask, self.positions = full, (full.cumsum(-1) - 1).clamp(min=0)

    def prefill(self) -> torch.Tensor:
        T = self.ids.shape[1]
        mask, pos = (self.mask[:, :T], self.positions[:, :T]) if self.padded else (None, None)
        out = self.model(self.ids, attention_mask=mask, position_ids=pos, cache=self.cache)
        return out.logits[:, -1].float()  # (R, V)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        past = self.cache.length
        mask, pos = (self.mask[:, : past + 1], self.positions[:, past : past + 1]) if self.padded else (None, None)
        out = self.model(tokens[:, None], attention_mask=mask, position_ids=pos, cache=self.cache)
        return out.logits[:, -1].float()  # (R, V)

    def reorder(self, index: torch.Tensor) -> None:
        # rows of one prompt share their mask and positions, and beams never leave their prompt
        self.cache.reorder(index)


class EncoderDecoderRunner:
    """T5: the encoder runs once per prompt; each decoder step reuses the cached cross-attention
    keys and values (computed at the first step) and the self-attention cache."""

    def __init__(
        self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, max_new: int, expand: int, start_id: int
    ) -> None:
        device = next(model.parameters()).device
        self.model = model
        memory, _ = model.encode(ids.to(device), mask.to(device))  # (B, S, C), once per prompt
        self.memory = memory.repeat_interleave(expand, dim=0)  # (R, S, C)
        self.memory_mask = mask.to(device).repeat_interleave(expand, dim=0)
        self.rows = self.memory.shape[0]
        self.start = torch.full((self.rows,), start_id, dtype=torch.long, device=device)
        self.cache = KVCache.for_model(model, self.rows, 1 + max_new)

    def prefill(self) -> torch.Tensor:
        return self.step(self.start)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        logits, *_ = self.model.decode(tokens[:, None], self.memory, self.memory_mask, cache=self.cache)
        return logits[:, -1].float()  # (R, V)

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)  # the memory rows of one prompt are equal: no need to move them
