"""Fill-mask for encoder-only models (BERT): the most likely tokens at each mask position."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.inference.loading import require_lm_head

MASK_PLACEHOLDER = "[MASK]"  # written in the text whatever the tokenizer's own mask token is
# what an encoder without a masked-LM head (e.g. a converted sentence-embedding MiniLM) is good for, and how
# it would get a head: said both by fill-mask and by generate, so neither sends the user to the other
NO_MLM_HEAD_HINT = (
    "it gives sentence embeddings (llmkit embeddings MODEL TEXT) and llmkit inspect MODEL describes it; to fill "
    "masks, use a checkpoint with a masked-LM head (e.g. convert bert-base-uncased) or train one: llmkit pretrain "
    "of an encoder (--model.encoder_head mlm) trains the head with the masked-LM objective"
)


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
    require_lm_head(model, "fill-mask")
    cfg, tokenizer = model.config, getattr(model, "tokenizer", None)
    if cfg.family != "encoder":
        raise LlmkitError(
            f"fill-mask needs an encoder with an MLM head; this is a {cfg.family} model", "use generate for it"
        )
    if cfg.encoder_head != "mlm":
        raise LlmkitError(f"this encoder has no MLM head (encoder_head={cfg.encoder_head}), so it cannot fill masks",
                          NO_MLM_HEAD_HINT)  # fmt: skip
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
            row.append(MaskFill(token_id, tokenizer.decode([token_id]), score, _with_masks(tokenizer, filled)))
        fills.append(row)
    return fills


def _with_masks(tokenizer, ids: list[int]) -> str:
    """The text of ``ids`` with the other masks kept as ``[MASK]``: a plain decode drops every special token,
    so with two masks each filled sentence lost the other one."""
    mask_id = tokenizer.mask_token_id
    special = {tokenizer.token_to_id(t) for t in tokenizer.special_tokens.values()} - {mask_id}
    text = tokenizer.decode([t for t in ids if t not in special], skip_special_tokens=False)
    return text.replace(tokenizer.special_tokens["mask"], MASK_PLACEHOLDER)
