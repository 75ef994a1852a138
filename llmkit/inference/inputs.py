"""Prompts in, padded token tensors out: tokenize, fit the context window, pad per family.

Decoder-only batches are left-padded, so every row's next token is at the last column;
encoder inputs are right-padded, as transformers pads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError

PromptInput = str | list[str] | list[int] | list[list[int]] | torch.Tensor | list[torch.Tensor]


@dataclass
class Prompts:
    """Token ids of each prompt (truncated if asked), and its text when it came as text."""

    ids: list[list[int]]
    texts: list[str | None]


def prepare_prompts(model: nn.Module, prompts: PromptInput, config: GenerationConfig) -> Prompts:
    """Tokenize (text needs ``model.tokenizer``) -> check ids -> fit the context window.

    Accepted: one string, a list of strings, one list of ids, a list of id lists, a 1-D tensor (one
    prompt), a 2-D tensor (one prompt per row, no padding) or a list of 1-D tensors.
    """
    rows = _as_rows(prompts)
    tokenizer = getattr(model, "tokenizer", None)
    if any(isinstance(r, str) for r in rows) and tokenizer is None:
        raise LlmkitError("text prompts need a tokenizer and this model has none", "pass token ids instead")
    ids = [tokenizer.encode(r) if isinstance(r, str) else r for r in rows]
    texts = [r if isinstance(r, str) else None for r in rows]
    cfg = model.config
    for i, row in enumerate(ids):
        if not row and cfg.family == "decoder":
            if cfg.bos_token_id is None:
                raise LlmkitError(f"prompt {i} is empty", "give it some text (the model has no bos token to start)")
            ids[i] = row = [cfg.bos_token_id]
        bad = [t for t in row if not 0 <= t < cfg.vocab_size]
        if bad:
            raise LlmkitError(f"prompt {i}: token id {bad[0]} is outside the vocabulary of {cfg.vocab_size}", "")
    return Prompts([_fit(i, row, model, config) for i, row in enumerate(ids)], texts)


def _as_rows(prompts: PromptInput) -> list:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() not in (1, 2):
            raise LlmkitError(f"a prompt tensor must be 1-D or 2-D, got shape {tuple(prompts.shape)}", "")
        return [prompts.tolist()] if prompts.dim() == 1 else prompts.tolist()
    rows = list(prompts)
    if not rows:
        raise LlmkitError("no prompts given", "pass a string, a list of strings or token ids")
    if all(isinstance(t, int) for t in rows):
        return [rows]
    return [r.tolist() if isinstance(r, torch.Tensor) else (r if isinstance(r, str) else list(r)) for r in rows]


def _fit(index: int, ids: list[int], model: nn.Module, config: GenerationConfig) -> list[int]:
    """Fit a prompt and its new tokens into the context window: an error with the numbers, or
    (``truncate``) the prompt's last tokens. One rule for every position kind: learned and sinusoidal
    tables end at ``max_seq_len``, and RoPE or relative models were trained on windows that long, so
    past it they would silently degrade (the server refuses the same request)."""
    cfg = model.config
    new = config.max_new_tokens
    if cfg.family == "encoder_decoder":  # the encoder reads the prompt; the decoder holds start + new tokens
        if 1 + new > cfg.max_seq_len:
            raise LlmkitError(
                f"max_new_tokens={new} does not fit the decoder's context window of {cfg.max_seq_len}",
                f"lower max_new_tokens to {cfg.max_seq_len - 1} or less",
            )
        room = cfg.max_seq_len
    else:
        room = cfg.max_seq_len - new
        if room < 1:
            raise LlmkitError(
                f"max_new_tokens={new} leaves no room for a prompt in the context window of {cfg.max_seq_len}",
                f"lower max_new_tokens to {cfg.max_seq_len - 1} or less",
            )
    if len(ids) <= room:
        return ids
    if config.truncate:
        return ids[-room:]
    total = f"{len(ids)} + {new} new tokens = {len(ids) + new}" if cfg.family == "decoder" else str(len(ids))
    raise LlmkitError(
        f"prompt {index} has {len(ids)} tokens; {total} positions exceed the context window of {cfg.max_seq_len}",
        f"shorten the prompt, lower max_new_tokens, or truncate (truncate=True, --truncate) to its last {room} tokens",
    )


def pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) and attention mask (B, T), 1 on real tokens; padding on the left or the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[b, cols] = torch.tensor(row, dtype=torch.long)
        mask[b, cols] = 1
    return ids, mask
