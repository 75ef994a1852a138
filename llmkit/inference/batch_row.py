"""One request in the server's batch (llmkit.inference.batcher): what it asks, where its tokens go, and its row.

``Request`` is what a caller submits; ``_Slot`` is its row while it waits, prefills and decodes: its text
state, generator and processors' state, its KV cache blocks, the tokens still to prefill, and the token to
feed next. Choosing a row's next token happens in two ways: ``Batcher`` picks every plain greedy row (no
processor, no grammar) with one argmax over the batch and calls ``accept``; any other row goes through
``pick`` alone, with its own settings and generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError
from llmkit.inference.constrained import Constraint
from llmkit.inference.engine import SequenceState
from llmkit.inference.sampling import MIN_TEMPERATURE, apply_processors, bias_tensor, next_tokens


@dataclass
class TokenEvent:
    """One generated token of a request: its text piece (may be "" while held back), id, log-probability
    under the model, the ``logprobs`` most likely alternatives {token text: logprob}, and, on the last
    token, why the request ended ("eos", "stop" or "length")."""

    text: str
    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob)
    finish_reason: str | None = None


@dataclass
class PromptScores:
    """A prompt's own scores: ``logprobs[i]`` is log p(token i | tokens before it), None for the first
    token (nothing predicts it); ``top_logprobs[i]`` the most likely alternatives at i (empty at 0)."""

    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]]]


@dataclass
class Request:
    """A prompt's token ids, its settings, and where its tokens go. ``cancel()`` (a client that went
    away) frees its row before the next step."""

    prompt_ids: list[int]
    config: GenerationConfig
    on_token: Callable[[TokenEvent], None]
    on_error: Callable[[Exception], None] = lambda err: None
    logprobs: int = 0  # alternatives to report per token
    prompt_logprobs: bool = False  # score the prompt too (on_prompt gets them before the first token)
    on_prompt: Callable[[PromptScores], None] = lambda scores: None
    cancelled: bool = False
    constraint: Constraint | None = None  # a one-row llguidance matcher the output must follow

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def scores_prompt(self) -> bool:
        """Its prompt's logits at every position are wanted (echo with logprobs, or scoring only)."""
        return self.prompt_logprobs or self.config.max_new_tokens == 0


def bad_scores(scores: torch.Tensor) -> torch.Tensor:
    """Rows (bool, (n,)) of scores (n, V) with NaN or +inf: the argmax of NaN is arbitrary and a draw from
    them raises deep inside torch, so such a row fails alone."""
    return (scores.isnan() | scores.isposinf()).any(-1)


def scores_error() -> LlmkitError:
    return LlmkitError(
        "the model's scores for this request are NaN or infinite",
        "check the checkpoint (llmkit inspect) and its dtype; fp16 overflows where bf16 and fp32 do not",
    )


class _Slot:
    """A request's row: its text state, generator, processors' state, KV cache blocks and the token to feed next."""

    def __init__(self, request: Request, tokenizer, device: torch.device, vocab: int | None = None) -> None:
        cfg = request.config
        self.request = request
        self.sequence = SequenceState(0, request.prompt_ids, tokenizer, cfg)
        self.generator = torch.Generator(device).manual_seed(cfg.seed) if cfg.seed is not None else None
        self.last = 0  # the token fed at the next step
        self.generated: list[int] = []
        self.failed = False  # its choice or callback raised: it leaves the batch, the others go on
        self.device, self.ready = device, False
        self.eos = torch.tensor(cfg.eos_token_id, dtype=torch.long, device=device) if cfg.eos_token_id else None
        # the KV cache (llmkit.inference.paged): its blocks, positions held, tokens still to run through the model
        self.table: list[int] = []
        self.cached = 0
        self.todo = list(request.prompt_ids)
        self.hashed, self.digest = 0, b""  # its leading blocks registered for prefix caching, the last one's digest
        self.prompt_logprobs: list[float] = []  # the prompt's scores so far, chunk by chunk (Request.scores_prompt)
        self.prompt_top: list[list[tuple[int, float]]] = []
        greedy = not cfg.do_sample or cfg.temperature < MIN_TEMPERATURE
        no_processors = not cfg.logit_bias and cfg.repetition_penalty == 1.0
        # a plain row's token is the argmax of its scores, picked for the whole batch at once
        self._plain = greedy and no_processors and not (cfg.presence_penalty or cfg.frequency_penalty)
        self._plain = self._plain and request.constraint is None
        self.bias = self.seen = self.counts = None  # the processors' state (_setup, at the first scores)
        if vocab is not None:
            self._setup(vocab)

    @property
    def started(self) -> bool:
        """It has emitted a token (a row evicted from the cache re-runs its tokens without choosing again)."""
        return bool(self.generated)

    @property
    def plain(self) -> bool:
        return self._plain and (self.eos is None or self.sequence.count >= self.request.config.min_new_tokens)

    def evicted(self) -> None:
        """Its cache blocks were taken back (Batcher._evict): it re-runs the prompt and its tokens but the last."""
        self.cached, self.hashed, self.digest = 0, 0, b""
        self.todo = list(self.request.prompt_ids) + self.generated[:-1]
        self.prompt_logprobs, self.prompt_top = [], []

    def _setup(self, vocab: int) -> None:
        """The processors' state, only for the settings that use it: a dense logit bias, the tokens the
        repetition penalty sees (prompt + generated), the generated tokens' counts (presence/frequency).
        Without ``vocab`` at construction, the first scores give it."""
        cfg, device = self.request.config, self.device
        self.bias = bias_tensor(cfg.logit_bias, vocab, device)
        self.seen = self.counts = None
        if cfg.repetition_penalty != 1.0:
            self.seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
            self.seen[0, self.request.prompt_ids] = True
        if cfg.presence_penalty or cfg.frequency_penalty:
            self.counts = torch.zeros(1, vocab, device=device)
        self.ready = True

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        """The row's scores (1, V) after its processors: logit bias -> repetition penalty -> presence /
        frequency penalties -> EOS masked below min_new_tokens (sampling.py's order)."""
        cfg = self.request.config
        if not self.ready:
            self._setup(scores.shape[-1])
        early = self.eos if self.sequence.count < cfg.min_new_tokens else None
        return apply_processors(scores, cfg, self.bias, self.seen, self.counts, early)

    def pick(self, scores: torch.Tensor) -> int:
        """The next token from this row's scores (1, V): its processors, then its grammar's mask (last, as in
        generate: the grammar decides among what the rest left), then argmax or a draw with its generator."""
        processed = self.process(scores)
        if self.request.constraint is not None:
            processed = self.request.constraint.mask(processed)
        return int(next_tokens(processed, self.request.config, self.generator)[0])

    def accept(self, token: int, logprob: float, top: list[tuple[int, float]]) -> TokenEvent:
        """Take ``token`` as the row's next one (``logprob`` under the model, ``top`` alternatives): the
        processors' state, the grammar, the text; sets ``last``."""
        req = self.request
        if self.seen is not None:
            self.seen[0, token] = True
        if self.counts is not None:
            self.counts[0, token] += 1
        complete = req.constraint.advance([token]) if req.constraint is not None else []
        piece = self.sequence.push(token, end="stop" if complete else None)
        self.last = token
        self.generated.append(token)
        return TokenEvent(piece.text, token, logprob, top, piece.finish_reason)

    def choose(self, scores: torch.Tensor) -> TokenEvent:
        """The next token from this row's scores (1, V) alone, with its log-probability under the model (before
        the processors, as OpenAI reports it). NaN or +inf scores raise for this row alone."""
        if bool(bad_scores(scores)[0]):
            raise scores_error()
        token = self.pick(scores)
        logp = scores[0].float().log_softmax(-1)
        top = []
        if self.request.logprobs:
            values, ids = logp.topk(min(self.request.logprobs, logp.shape[-1]))
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        return self.accept(token, float(logp[token]), top)
