"""OpenAI's logprobs objects from the batcher's events: the legacy completions shape (tokens,
token_logprobs, top_logprobs, text_offset) and the chat shape (content entries with bytes).

With ``echo`` the prompt's own tokens come first (OpenAI's and vLLM's shape, which lm-evaluation-
harness reads): the first token's logprob and alternatives are null, since nothing predicts it.
``text_offset`` is each token's character offset in the returned text: for the prompt, the length of
the decoded tokens before it (a character split over several byte-level tokens counts once whole);
for generated tokens, the echo's length plus the text generated before it.
"""

from __future__ import annotations

import math
from typing import Any

from llmkit.inference.batcher import PromptScores, TokenEvent
from llmkit.inference.explain import token_text


def finite(logprob: float) -> float:
    """JSON has no -inf: a token the filters removed gets OpenAI's -9999.0."""
    return logprob if math.isfinite(logprob) else -9999.0


def top(tokenizer, alternatives: list[tuple[int, float]]) -> dict[str, float]:
    """{token text: logprob} of the most likely alternatives."""
    return {token_text(tokenizer, t): finite(lp) for t, lp in alternatives}


def completion_logprobs(tokenizer, events: list[TokenEvent], start: int) -> dict[str, Any]:
    """The logprobs object of generated tokens whose text starts at character ``start`` of the choice."""
    offsets, at = [], start
    for ev in events:
        offsets.append(at)
        at += len(ev.text)
    return {
        "tokens": [token_text(tokenizer, ev.token_id) for ev in events],
        "token_logprobs": [finite(ev.logprob) for ev in events],
        "top_logprobs": [top(tokenizer, ev.top_logprobs) for ev in events],
        "text_offset": offsets,
    }


def with_prompt(tokenizer, prompt: PromptScores, generated: dict[str, Any]) -> dict[str, Any]:
    """``generated``'s logprobs object with the prompt's tokens in front (echo with logprobs)."""
    ids = prompt.token_ids
    return {
        "tokens": [token_text(tokenizer, t) for t in ids] + generated["tokens"],
        "token_logprobs": [None if lp is None else finite(lp) for lp in prompt.logprobs] + generated["token_logprobs"],
        "top_logprobs": [None] + [top(tokenizer, alts) for alts in prompt.top_logprobs[1:]] + generated["top_logprobs"],
        "text_offset": prefix_offsets(tokenizer, ids) + generated["text_offset"],
    }


def prefix_offsets(tokenizer, ids: list[int]) -> list[int]:
    """Character offset of each prompt token in the decoded prompt: the length of the text of the tokens
    before it (a partial character at the end of a prefix is left out, so offsets never point inside one)."""
    prefixes = tokenizer.backend.decode_batch([ids[:i] for i in range(len(ids))], skip_special_tokens=True)
    return [len(text.rstrip("\ufffd")) for text in prefixes]


def chat_logprob(tokenizer, ev: TokenEvent) -> dict[str, Any]:
    """One chat logprobs content entry: the token, its logprob and bytes, and its top alternatives."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = token_text(tokenizer, token_id)
        return {"token": text, "logprob": finite(logprob), "bytes": list(text.encode("utf-8"))}

    return {**entry(ev.token_id, ev.logprob), "top_logprobs": [entry(t, lp) for t, lp in ev.top_logprobs]}
