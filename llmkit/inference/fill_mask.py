"""Fill-mask for encoder-only models (BERT): the most likely tokens at each mask position."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmkit.errors import LlmkitError

MASK_PLACEHOLDER = "[MASK]"  # written in the text whatever the tokenizer's own mask token is


@dataclass
class MaskFill:
    """One candidate for one mask, as transformers' fill-mask pipeline reports it."""

    token_id: int
    token: str
    score: float
    sequence: str  # the text with this mask filled


def fill_mask(model: nn.Module, text: str, top_k: int = 5) -> list[list[MaskFill]]:
    """Top ``top_k`` candidates for each mask in ``text``, in order of the masks.

    Order: replace ``[MASK]`` by the tokenizer's mask token -> encode with special tokens ([CLS] ...
    [SEP]) -> one forward pass -> softmax at each mask position -> top-k.
    """
    cfg, tokenizer = model.config, getattr(model, "tokenizer", None)
    if cfg.family != "encoder" or cfg.encoder_head != "mlm":
        raise LlmkitError(
            f"fill-mask needs an encoder with an MLM head; this is a {cfg.family} model", "use generate for it"
        )
    if tokenizer is None or tokenizer.mask_token_id is None:
        raise LlmkitError("fill-mask needs a tokenizer with a mask token", "load a checkpoint with its tokenizer")
    if top_k < 1:
        raise LlmkitError(f"top_k={top_k} must be >= 1", "change --top-k")
    mask_token, mask_id = tokenizer.special_tokens["mask"], tokenizer.mask_token_id
    ids = tokenizer.encode(text.replace(MASK_PLACEHOLDER, mask_token))
    where = [i for i, t in enumerate(ids) if t == mask_id]
    if not where:
        raise LlmkitError(f"no {MASK_PLACEHOLDER} in the text", f"write {MASK_PLACEHOLDER} where a word is missing")
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=device)).logits[0, where].float()  # (masks, V)
        top = logits.softmax(-1).topk(min(top_k, logits.shape[-1]))
    fills = []
    for m, pos in enumerate(where):
        row = []
        for score, token_id in zip(top.values[m].tolist(), top.indices[m].tolist(), strict=True):
            filled = ids[:pos] + [token_id] + ids[pos + 1 :]
            row.append(MaskFill(token_id, tokenizer.decode([token_id]), score, tokenizer.decode(filled)))
        fills.append(row)
    return fills
