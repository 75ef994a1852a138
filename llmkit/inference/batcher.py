"""Continuous batching: requests join and leave a running batch between decoding steps.

One background thread owns a shared KV cache of ``max_batch`` rows and ``capacity`` positions
(the model's context window). Active requests occupy rows [0, n); each step runs the model once
over those n rows, one new token each, so requests that arrive together are decoded together and
a request never waits for another to finish.

Rows of different ages share the cache's columns: row r's tokens sit in columns [start_r, length),
right-aligned at the shared length, the columns before start_r masked out, and its positions
counted from start_r (as a left-padded batch of the engine, runners.DecoderRunner). A new request
is prefilled alone on a cache of its own (its numbers equal ``generate`` of that prompt) and its
keys/values copied into a free row at [length - P, length). Columns are recycled by shifting:
left by the oldest row's start when the cache is full, right when a prompt is longer than the
shared length. A finished or cancelled request's row is refilled by the last active row, so the
active rows stay first. Sampling runs per row with that request's own settings and generator; a
row whose scores are NaN/inf, whose draw raises or whose callback raises gets its own error and
leaves the batch, and the other rows go on.

A request may ask for its prompt's own log-probabilities (``prompt_logprobs``, OpenAI's ``echo`` with
``logprobs``): the prefill's logits at every position give them, in fp32, and ``on_prompt`` receives
them before the first token; with ``max_new_tokens == 0`` the request ends there (scoring only), and
``on_prompt`` is called whether or not it asked for them (it is the request's end).

A request may carry a ``constraint`` (llmkit.inference.constrained: ``RowGrammars(...).start()`` for
one row, a fresh one per request): its grammar's mask is applied after the row's other processors,
its matcher consumes the chosen token, and the row ends ("stop") when the grammar is complete, as in
``generate``. Rows with and without constraints share the batch; each masks only its own scores.

Decoder-only models; per-request settings are those of the OpenAI API plus vLLM's extras (logit
bias, repetition / presence / frequency penalties, top-k, min-p; no beam search). Callbacks run on
the batcher's thread and must be quick (the server posts each token to an asyncio queue).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError
from llmkit.inference.constrained import Constraint
from llmkit.inference.engine import SequenceState
from llmkit.inference.runners import use_decode_layout
from llmkit.inference.sampling import apply_processors, bias_tensor, next_tokens
from llmkit.models.cache import KVCache


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


class _Slot:
    """An active request in the batch: its text state, generator, processors' state and the token to feed next."""

    def __init__(self, request: Request, tokenizer, device: torch.device, vocab: int | None = None) -> None:
        cfg = request.config
        self.request = request
        self.sequence = SequenceState(0, request.prompt_ids, tokenizer, cfg)
        self.generator = torch.Generator(device).manual_seed(cfg.seed) if cfg.seed is not None else None
        self.start = 0  # first cache column of this row
        self.last = 0  # the token fed at the next step
        self.failed = False  # its choice or callback raised: it leaves the batch, the others go on
        self.device, self.ready = device, False
        self.eos = torch.tensor(cfg.eos_token_id, dtype=torch.long, device=device) if cfg.eos_token_id else None
        if vocab is not None:
            self._setup(vocab)

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

    def choose(self, scores: torch.Tensor) -> TokenEvent:
        """The next token from this row's scores (1, V), with its log-probability under the model (before
        the processors, as OpenAI reports it); sets ``last``.

        NaN or +inf scores (a broken model, or an overflow) raise for this row alone: the argmax of
        NaN is arbitrary and a draw from them raises deep inside torch.
        """
        req = self.request
        if bool(scores.isnan().any()) or bool(scores.isposinf().any()):
            raise LlmkitError(
                "the model's scores for this request are NaN or infinite",
                "check the checkpoint (llmkit inspect) and its dtype; fp16 overflows where bf16 and fp32 do not",
            )
        processed = self.process(scores)
        if req.constraint is not None:  # last, as in generate: the grammar decides among what the rest left
            processed = req.constraint.mask(processed)
        token = int(next_tokens(processed, req.config, self.generator)[0])
        logp = scores[0].float().log_softmax(-1)
        top = []
        if req.logprobs:
            values, ids = logp.topk(min(req.logprobs, logp.shape[-1]))
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        if self.seen is not None:
            self.seen[0, token] = True
        if self.counts is not None:
            self.counts[0, token] += 1
        complete = req.constraint.advance([token]) if req.constraint is not None else []
        piece = self.sequence.push(token, end="stop" if complete else None)
        self.last = token
        return TokenEvent(piece.text, token, float(logp[token]), top, piece.finish_reason)


class Batcher:
    """Decodes submitted requests in one shared batch on a background thread (``start``/``close``).

    ``step_sizes`` records the batch size of every decoding step (how many requests shared it);
    tests and the load benchmark read it.
    """

    def __init__(self, model: nn.Module, max_batch: int = 8, capacity: int | None = None) -> None:
        if model.config.family != "decoder":
            raise LlmkitError(
                f"continuous batching serves decoder-only models; this one is {model.config.family}",
                "serve a decoder-only (GPT-2 / Llama) checkpoint",
            )
        if max_batch < 1:
            raise LlmkitError(f"max_batch={max_batch} must be >= 1", "pass --max-batch 1 or more")
        self.model, self.max_batch = model, max_batch
        self.capacity = capacity or model.config.max_seq_len
        self.tokenizer = getattr(model, "tokenizer", None)
        self.device = next(model.parameters()).device
        use_decode_layout(model)  # once, before the thread: it re-lays weights out
        self.cache = KVCache.for_model(model, max_batch, self.capacity)
        self.slots: list[_Slot] = []  # active requests; slot i owns cache row i
        self.pending: queue.Queue[Request | None] = queue.Queue()
        self.step_sizes: list[int] = []
        self.on_step: Callable[[int], None] | None = None  # told each step's batch size (the server's metrics)
        self._thread: threading.Thread | None = None
        self._closed = False

    # ---- the caller's side --------------------------------------------------------------------
    def check(self, prompt_len: int, max_new_tokens: int) -> None:
        """Raise unless a prompt of ``prompt_len`` tokens plus ``max_new_tokens`` fits the context window."""
        if prompt_len < 1:
            raise LlmkitError("the prompt is empty", "give it some text")
        if prompt_len + max_new_tokens > self.capacity:
            raise LlmkitError(
                f"the prompt has {prompt_len} tokens; {prompt_len} + {max_new_tokens} new tokens exceed the context "
                f"window of {self.capacity}",
                "shorten the prompt or lower max_tokens",
            )

    def submit(self, request: Request) -> None:
        """Queue a request; it joins the batch before the next step."""
        self.check(len(request.prompt_ids), request.config.max_new_tokens)
        if self._closed:
            raise LlmkitError("the batcher is closed", "start a new one")
        self.pending.put(request)

    def start(self) -> Batcher:
        self._thread = threading.Thread(target=self._run, name="llmkit-batcher", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        self.pending.put(None)  # wakes the thread if it waits for work
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- the decoding thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            # wait for work only when nothing is decoding; otherwise take whatever has arrived
            self._admit(block=not self.slots)
            self._drop(lambda slot: slot.request.cancelled)
            if self.slots:
                try:
                    self._step()
                except Exception as err:  # a failed forward pass fails its requests, not the server
                    for slot in self.slots:
                        slot.request.on_error(err)
                    self._drop(lambda slot: True)

    def _admit(self, block: bool) -> None:
        while len(self.slots) < self.max_batch:
            try:
                request = self.pending.get(block=block)
            except queue.Empty:
                return
            block = False
            if request is None or request.cancelled:
                continue
            try:
                self._prefill(request)
            except Exception as err:
                request.on_error(err)

    @torch.inference_mode()
    def _prefill(self, request: Request) -> None:
        """Run the prompt alone, emit its first token, and copy its keys/values into a free row."""
        ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.device)
        own = KVCache.for_model(self.model, 1, ids.shape[1])
        all_logits = self.model(ids, cache=own).logits  # (1, P, V)
        if request.prompt_logprobs or request.config.max_new_tokens == 0:
            request.on_prompt(self._prompt_scores(request, all_logits[0]))
        if request.config.max_new_tokens == 0:  # scoring only: on_prompt was its end; no row to take
            return
        logits = all_logits[:, -1].float()  # (1, V)
        slot = _Slot(request, self.tokenizer, self.device, logits.shape[-1])
        event = slot.choose(logits)
        request.on_token(event)
        if event.finish_reason is not None:
            return
        P, row = ids.shape[1], len(self.slots)
        if self.cache.length < P:
            self._shift(P - self.cache.length)
        L = self.cache.length
        for mine, shared in zip(own.layers, self.cache.layers, strict=True):
            shared.k[row, :, L - P : L] = mine.k[0]
            shared.v[row, :, L - P : L] = mine.v[0]
        slot.start = L - P
        self.slots.append(slot)

    @staticmethod
    def _prompt_scores(request: Request, logits: torch.Tensor) -> PromptScores:
        """log p(token i | tokens < i) for i >= 1 from the prefill's logits (P, V), in fp32, with the
        ``request.logprobs`` best alternatives at each position (lm-evaluation-harness's is_greedy reads them)."""
        ids = request.prompt_ids
        if bool(logits.isnan().any()) or bool(logits.isposinf().any()):
            raise LlmkitError("the model's scores for this prompt are NaN or infinite", "check the checkpoint")
        logp = logits[:-1].float().log_softmax(-1)  # (P - 1, V): row i predicts token i + 1
        targets = torch.tensor(ids[1:], dtype=torch.long, device=logp.device)
        chosen = logp.gather(-1, targets[:, None])[:, 0].tolist()
        tops: list[list[tuple[int, float]]] = [[]]
        if request.logprobs:
            values, alts = logp.topk(min(request.logprobs, logp.shape[-1]), dim=-1)
            tops += [list(zip(a, v, strict=True)) for a, v in zip(alts.tolist(), values.tolist(), strict=True)]
        else:
            tops += [[] for _ in chosen]
        return PromptScores(list(ids), [None, *chosen], tops)

    @torch.inference_mode()
    def _step(self) -> None:
        """One new token for every active row: one forward pass over rows [0, n)."""
        if self.cache.length == self.capacity:
            self._shift(-min(slot.start for slot in self.slots))  # >= 1: each row fits the window (check)
        n, L = len(self.slots), self.cache.length
        starts = torch.tensor([slot.start for slot in self.slots], device=self.device)
        columns = torch.arange(L + 1, device=self.device)
        mask = (columns[None] >= starts[:, None]).long()  # (n, L + 1): 1 on each row's own tokens
        positions = (L - starts)[:, None]  # (n, 1): tokens of the row before this one
        tokens = torch.tensor([[slot.last] for slot in self.slots], device=self.device)  # (n, 1)
        view = self.cache.first_rows(n)
        logits = self.model(tokens, attention_mask=mask, position_ids=positions, cache=view).logits[:, -1].float()
        self.cache.length = view.length
        self.step_sizes.append(n)
        if self.on_step is not None:
            self.on_step(n)
        for r, slot in enumerate(self.slots):
            if slot.request.cancelled:
                continue
            try:
                slot.request.on_token(slot.choose(logits[r : r + 1]))
            except Exception as err:  # this row's own failure (its scores, settings or callback): it alone ends
                slot.failed = True
                slot.request.on_error(err)
        self._drop(lambda slot: slot.request.cancelled or slot.failed or slot.sequence.finish_reason is not None)

    def _drop(self, gone: Callable[[_Slot], bool]) -> None:
        """Remove finished slots; the last active row moves into each freed row."""
        r = 0
        while r < len(self.slots):
            if not gone(self.slots[r]):
                r += 1
                continue
            last = len(self.slots) - 1
            if r != last:
                for layer in self.cache.layers:
                    layer.k[r], layer.v[r] = layer.k[last], layer.v[last]
                self.slots[r] = self.slots[last]
            self.slots.pop()
        if not self.slots:
            self.cache.length = 0

    def _shift(self, by: int) -> None:
        """Move the active rows' columns right (``by`` > 0) or left (< 0) and the shared length with them."""
        n, L = len(self.slots), self.cache.length
        if by == 0 or n == 0:
            self.cache.length = max(L + by, 0)
            return
        src, dst = (slice(0, L), slice(by, L + by)) if by > 0 else (slice(-by, L), slice(0, L + by))
        for layer in self.cache.layers:
            layer.k[:n, :, dst] = layer.k[:n, :, src].clone()
            layer.v[:n, :, dst] = layer.v[:n, :, src].clone()
        for slot in self.slots:
            slot.start += by
        self.cache.length = L + by
