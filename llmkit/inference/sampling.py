"""From logits to the next token: the pure per-step steps, each one small function.

Order, as transformers' ``_get_logits_processor`` applies them, with OpenAI's two extras first
(vLLM's order): logit bias -> repetition penalty -> presence/frequency penalties -> EOS masked below
``min_new_tokens`` -> [sampling only] temperature -> top-k -> top-p -> min-p -> softmax -> draw.
Greedy decoding takes the argmax after the processors.
Filtered tokens get -inf, so the softmax renormalises over the kept ones.

Temperatures below ``MIN_TEMPERATURE`` decode greedily: dividing fp32 logits by a tinier number
overflows them to inf, and the softmax of inf - inf is NaN (a 2.9e-39 temperature did that).
"""

from __future__ import annotations

import torch

from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError

# Below this the draw is the argmax anyway (a gap of 1e-3 in logits becomes e^100 in odds), and
# logits up to 1e33 still divide without overflow. vLLM uses the same floor (_SAMPLING_EPS).
MIN_TEMPERATURE = 1e-5


# ---- processors (all decoding strategies) -----------------------------------------------------
def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): scores (B, V) of tokens already in the sequence (``seen``, bool (B, V))
    are divided by ``penalty`` when positive and multiplied by it when negative."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def apply_presence_frequency(
    scores: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's additive penalties: ``scores[j] - counts[j] * frequency - (counts[j] > 0) * presence``,
    where ``counts`` (B, V) counts each token among the tokens generated so far (the prompt is not counted)."""
    counts = counts.to(scores.dtype)
    return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence


def bias_tensor(bias: dict[int, float], vocab: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """``logit_bias`` {token id: bias} as a dense (V,) vector to add to every row's scores; None when empty.
    Ids past the vocabulary are an error (a silent no-op would hide a wrong tokenizer)."""
    if not bias:
        return None
    bad = sorted(t for t in bias if not 0 <= t < vocab)
    if bad:
        raise LlmkitError(f"logit_bias names token id(s) {bad[:5]} outside the vocabulary of {vocab}", "fix the ids")
    dense = torch.zeros(vocab, device=device)
    dense[torch.tensor(list(bias), device=device)] = torch.tensor([float(b) for b in bias.values()], device=device)
    return dense


def suppress(scores: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """-inf at ``token_ids`` in every row (EOS until ``min_new_tokens`` are generated)."""
    return scores.index_fill(-1, token_ids, float("-inf"))


def apply_processors(
    scores: torch.Tensor,
    config: GenerationConfig,
    bias: torch.Tensor | None,
    seen: torch.Tensor | None,
    counts: torch.Tensor | None,
    eos: torch.Tensor | None,
) -> torch.Tensor:
    """The processors in their one order, for ``generate`` and the server's batcher alike: logit bias ->
    repetition penalty (``seen``) -> presence/frequency penalties (``counts``) -> ``eos`` masked (pass it
    only while fewer than ``min_new_tokens`` are generated). None skips a processor."""
    if bias is not None:
        scores = scores + bias
    if seen is not None:
        scores = apply_repetition_penalty(scores, seen, config.repetition_penalty)
    if counts is not None:
        scores = apply_presence_frequency(scores, counts, config.presence_penalty, config.frequency_penalty)
    if eos is not None:
        scores = suppress(scores, eos)
    return scores


# ---- warpers (sampling only) ------------------------------------------------------------------
def top_k_keep(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits (and any tied with the k-th); ``k == 0`` keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return torch.ones_like(logits, dtype=torch.bool)
    kth = torch.topk(logits, k).values[..., -1:]  # (B, 1)
    return logits >= kth


def top_p_keep(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (Holtzman et al. 2019): the smallest set of most likely tokens whose mass reaches ``p``.

    As transformers: sort ascending, drop tokens whose cumulative mass is <= 1 - p, keep the top one.
    """
    if p >= 1.0:
        return torch.ones_like(logits, dtype=torch.bool)
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - p)
    drop[..., -1:] = False  # the most likely token always stays
    return ~drop.scatter(-1, order, drop)


def min_p_keep(logits: torch.Tensor, p: float) -> torch.Tensor:
    """min-p (Nguyen et al. 2024): keep tokens with probability >= ``p`` * probability of the top token."""
    if p <= 0.0:
        return torch.ones_like(logits, dtype=torch.bool)
    probs = logits.softmax(dim=-1)
    return probs >= p * probs.amax(dim=-1, keepdim=True)


def warp(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """temperature -> top-k -> top-p -> min-p on logits (B, V); each filter sees the previous one's output.

    ``temperature`` below ``MIN_TEMPERATURE`` (0 included) keeps only the argmax (greedy).
    """
    if temperature < MIN_TEMPERATURE:
        return logits.masked_fill(~_argmax_mask(logits), float("-inf"))
    if temperature != 1.0:
        logits = logits / temperature
    for keep, value, off in ((top_k_keep, top_k, 0), (top_p_keep, top_p, 1.0), (min_p_keep, min_p, 0.0)):
        if value != off:
            logits = logits.masked_fill(~keep(logits, value), float("-inf"))
    return logits


def logits_to_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """Probabilities (B, V) to sample from: temperature -> top-k -> top-p -> min-p -> softmax (in fp32)."""
    return warp(logits.float(), temperature, top_k, top_p, min_p).softmax(dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``probs`` (B, V), drawn with ``generator`` (torch's global one if None)."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def next_tokens(scores: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row from processed scores (B, V): argmax, or a draw when ``do_sample``."""
    if not config.do_sample or config.temperature < MIN_TEMPERATURE:
        return scores.argmax(dim=-1)
    probs = logits_to_probs(scores, config.temperature, config.top_k, config.top_p, config.min_p)
    return sample(probs, generator)


def _argmax_mask(logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, logits.argmax(-1, keepdim=True), True)
