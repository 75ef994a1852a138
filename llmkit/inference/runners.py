"""One decoding step of a model, behind the same three calls for both families that decode.

``prefill()`` runs the prompt and returns the logits of each row's next token; ``step(tokens)``
feeds one new token per row; ``reorder(index)`` keeps cache rows for beam search. The KV cache is
allocated once for the prompt plus all new tokens (gpt-fast style), so a step never reallocates.
With ``compile=True`` each step after the prompt runs as one torch.compile'd graph (compiled.py).
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.inference.compiled import compiled_step, decoder_step, encoder_decoder_step, sign
from llmkit.inference.native import NativeStep
from llmkit.models.cache import KVCache
from llmkit.quantize import use_bf16_kernels


@torch.no_grad()
def use_decode_layout(model: nn.Module, compiled: bool = False) -> None:
    """Lay out CPU ``nn.Linear`` weights for one-row matmuls. Values, shapes, names and tied weights stay
    as they are (the Parameter objects are kept, only their memory layout changes), so saving, loading
    and training see no difference. Idempotent: weights already laid out so are not copied.

    Eager (``compiled=False``): square and widening weights (out >= in: the lm head, QKV, the MLP's up
    projection) column-major, the transpose of a contiguous (in, out) matrix as GPT-2's Conv1D stores
    it, which MKL streams from memory 1.2-1.8x faster (1-thread AMD EPYC: GPT-2 small's head 13 -> 23
    GB/s); narrowing ones (the MLP's down projection) are faster as they are. Compiled: all row-major
    (out, in), the layout the compiled step's multiply-and-sum over ``in`` reads contiguously.

    bf16 weights are kept row-major in both modes and their linears get ``Bf16Linear``'s forward, which
    sends decoding steps through the C kernel (llmkit.quantize.kernels) where it is built.

    So one model switched between eager and compiled generation pays at every switch: a copy of every
    weight (540 MB for SmolLM2-135M in fp32) and, at the first switch back, a recompile of the step for
    the other layout (the strides are guarded). Keep a model per mode when both are needed
    (bench/generate_real.py does: its shared model had the compiled runs pay both, 2026-12-02).
    """
    for module in model.modules():
        w = module.weight if isinstance(module, nn.Linear) else None
        if w is None or w.device.type != "cpu" or w.dim() != 2:
            continue
        if w.dtype == torch.bfloat16 and not w.is_contiguous():
            w.data = w.data.contiguous()
        elif w.dtype == torch.bfloat16:
            continue
        elif compiled and not w.is_contiguous():
            w.data = w.data.contiguous()
        elif not compiled and w.is_contiguous() and w.shape[0] >= w.shape[1]:
            w.data = w.data.t().contiguous().t()
    use_bf16_kernels(model)


class DecoderRunner:
    """GPT-2 / Llama. Left-padded rows get an attention mask over past + new tokens and positions
    counted from each row's first real token, ``(mask.cumsum(-1) - 1).clamp(min=0)``, as
    transformers' generate does; a batch without padding passes neither (cheaper steps)."""

    def __init__(
        self,
        model: nn.Module,
        ids: torch.Tensor,
        mask: torch.Tensor,
        max_new: int,
        compile: bool = False,
        native: bool = False,
    ) -> None:
        device = next(model.parameters()).device
        self.model, self.ids = model, ids.to(device)
        self.rows, prompt_len = ids.shape
        self.cache = KVCache.for_model(model, self.rows, prompt_len + max_new)
        # native (llmkit.inference.native, checked by the caller): the steps after the prompt in one C call each
        self.native = NativeStep(model, self.cache) if native else None
        compile = compile and self.native is None
        self.forward_step = compiled_step("decoder") if compile else decoder_step
        if compile:
            sign(model)  # what the compiled step is guarded on (llmkit.inference.compiled)
        self.padded = not bool(mask.all())
        if self.padded:
            full = torch.cat([mask, mask.new_ones(self.rows, max_new)], dim=1).to(device)  # (R, T + new)
            self.mask, self.positions = full, (full.cumsum(-1) - 1).clamp(min=0)

    def prefill(self) -> torch.Tensor:
        T = self.ids.shape[1]
        mask, pos = (self.mask[:, :T], self.positions[:, :T]) if self.padded else (None, None)
        # the head at each row's last position alone (left padding keeps it real): the rest are never read
        last = torch.zeros_like(self.ids, dtype=torch.bool)
        last[:, -1] = True
        out = self.model(self.ids, attention_mask=mask, position_ids=pos, cache=self.cache, logits_at=last)
        return out.logits.float()  # (R, V)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.native is not None:
            return self.native.step(int(tokens[0]))
        past = self.cache.length
        mask, pos = (self.mask[:, : past + 1], self.positions[:, past : past + 1]) if self.padded else (None, None)
        return self.forward_step(self.model, tokens, mask, pos, self.cache)  # (R, V)

    def reorder(self, index: torch.Tensor) -> None:
        # rows of one prompt share their mask and positions, and beams never leave their prompt
        self.cache.reorder(index)


class EncoderDecoderRunner:
    """T5: the encoder runs once per prompt; each decoder step reuses the cached cross-attention
    keys and values (computed at the first step) and the self-attention cache."""

    def __init__(
        self,
        model: nn.Module,
        ids: torch.Tensor,
        mask: torch.Tensor,
        max_new: int,
        expand: int,
        start_id: int,
        compile: bool = False,
    ) -> None:
        device = next(model.parameters()).device
        self.model = model
        self.forward_step = compiled_step("encoder_decoder") if compile else encoder_decoder_step
        if compile:
            sign(model)
        memory, _ = model.encode(ids.to(device), mask.to(device))  # (B, S, C), once per prompt
        self.memory = memory.repeat_interleave(expand, dim=0)  # (R, S, C)
        self.memory_mask = mask.to(device).repeat_interleave(expand, dim=0)
        self.rows = self.memory.shape[0]
        self.start = torch.full((self.rows,), start_id, dtype=torch.long, device=device)
        self.cache = KVCache.for_model(model, self.rows, 1 + max_new)

    def prefill(self) -> torch.Tensor:
        # eager: the first step also projects the encoder output for cross-attention
        return encoder_decoder_step(self.model, self.start, self.memory, self.memory_mask, self.cache)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_step(self.model, tokens, self.memory, self.memory_mask, self.cache)  # (R, V)

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)  # the memory rows of one prompt are equal: no need to move them
