"""Perplexity of a text under a decoder-only model, with a sliding window.

As in the Hugging Face perplexity guide ("Perplexity of fixed-length models"): windows of the
model's context length move ``stride`` tokens at a time, and each scores only the tokens the
previous one did not, so every token after the first is scored exactly once, with at least
``window - stride`` tokens of earlier context. A larger stride is faster; a smaller one gives each
token more context. Two differences from the guide's code: it averages per-window mean losses
weighted by the window's target count, while this sums per-token losses (the exact mean); and
with ``stride == window`` it silently skips each window's first token, which is why the stride
here must stay below the window (the default is half of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from llmkit.errors import LlmkitError
from llmkit.inference.inputs import pad
from llmkit.inference.loading import require_lm_head


@dataclass
class Perplexity:
    """exp(mean negative log-likelihood per scored token)."""

    perplexity: float
    nll: float  # mean nats per scored token
    tokens: int  # tokens scored (all but the first)
    windows: int
    window: int
    stride: int


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over ``n_tokens`` tokens.

    A window reads tokens [begin, end) and scores positions [first, end). The first window scores
    all it holds but position 0 (nothing predicts it); each next one ends ``stride`` tokens later,
    starts ``window`` tokens before its end, and scores the tokens after the previous end. So every
    token after the first is scored once, with at least ``window - stride`` tokens of context.
    """
    if not 1 <= stride < window:
        raise LlmkitError(
            f"stride={stride} must be at least 1 and below the window ({window})",
            f"change --stride (e.g. {max(window // 2, 1)}: each token then sees at least half a window)",
        )
    spans, first, end = [], 1, min(window, n_tokens)
    while first < n_tokens:
        spans.append((max(0, end - window), end, first))
        first, end = end, min(end + stride, n_tokens)
    return spans


@torch.no_grad()
def perplexity(
    model: nn.Module, ids: list[int], stride: int | None = None, batch_size: int = 4, progress: bool = True
) -> Perplexity:
    """Sliding-window perplexity of the token ids ``ids`` (window: the model's context length)."""
    require_lm_head(model, "perplexity")
    if model.config.family != "decoder":
        raise LlmkitError("perplexity needs a decoder-only model", "pass a decoder (GPT-2, Llama) checkpoint")
    if len(ids) < 2:
        raise LlmkitError(f"the text has {len(ids)} token(s); perplexity needs at least 2", "use a longer text")
    window = model.config.max_seq_len
    stride = stride or max(window // 2, 1)
    spans = windows(len(ids), window, stride)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    batches = [spans[i : i + batch_size] for i in range(0, len(spans), batch_size)]
    for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress, leave=False):
        rows, _ = pad([ids[begin:end] for begin, end, _ in batch], 0, left=False)
        # right padding under a causal mask: real positions never see the pads after them
        logits = model(rows.to(device)).logits.float()
        for b, (begin, end, first) in enumerate(batch):
            targets = torch.tensor(ids[first:end], device=device)
            total += float(F.cross_entropy(logits[b, first - begin - 1 : end - begin - 1], targets, reduction="sum"))
            count += end - first
    nll = total / count
    return Perplexity(math.exp(nll), nll, count, len(spans), window, stride)
