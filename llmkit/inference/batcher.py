"""Continuous batching: requests join and leave a running batch between decoding steps.

One background thread owns a paged KV cache (llmkit.inference.paged): a pool of fixed-size blocks that
rows take as their tokens need them, bounded by ``kv_cache_mb`` rather than rows x the context window.
Each iteration of its loop runs (1) one decoding step for every row that has its prompt in the cache (one
new token each, one forward pass) and (2) one prefill pass over the rows still reading their prompts: the
waiting prompts are run together, left-padded, up to ``prefill_tokens`` positions (rows x the longest
chunk) per pass, longer prompts in chunks over several iterations (chunked prefill), so a burst of arrivals
is prefilled in a few passes and the rows already decoding are delayed by at most one pass per token. A
prompt's logits in a batched, chunked prefill equal its prefill alone up to summation order.

Room: a request joins the batch when a row is free (``max_batch``) and the pool has blocks for its prompt;
until then it waits in order (the server's queue limit answers 429 past that). A decoding row that needs a
block when none is free takes the blocks of the row that joined last (vLLM's recompute preemption): that row
goes back to the front of the queue and later re-runs its prompt and tokens (without choosing them again).
A request that could not fit the pool even alone is refused at ``submit`` (LlmkitError: a 400).

Choosing tokens: the plain greedy rows (no processor, no grammar) take one argmax over the batch's scores;
the others choose alone, with that request's own settings and generator (batch_row._Slot). A row whose
scores are NaN/inf, whose draw raises or whose callback raises gets its own error and leaves the batch, and
the other rows go on. A request may ask for its prompt's own log-probabilities (``prompt_logprobs``,
OpenAI's ``echo`` with ``logprobs``): its prefill's logits at every position give them, in fp32, and
``on_prompt`` receives them before the first token; with ``max_new_tokens == 0`` the request ends there
(scoring only). A request may carry a ``constraint`` (llmkit.inference.constrained): its grammar masks its
own scores last and ends it ("stop") when complete, as in ``generate``.

Decoder-only models; per-request settings are those of the OpenAI API plus vLLM's extras. Callbacks run on
the batcher's thread and must be quick (the server posts each token to an asyncio queue).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable

import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.inference.batch_row import PromptScores, Request, TokenEvent, _Slot, bad_scores, scores_error
from llmkit.inference.decode_attention import OneQueryAttention
from llmkit.inference.paged import PagedKVCache, bytes_per_token
from llmkit.inference.runners import use_decode_layout

__all__ = ["Batcher", "PromptScores", "Request", "TokenEvent"]

DEFAULT_MAX_BATCH = 64  # rows decoded together (docs/serving.md: what a batch-64 step costs)
DEFAULT_KV_CACHE_MB = 1024  # the KV pool, at least one full context window
DEFAULT_PREFILL_TOKENS = 512  # positions (rows x longest chunk) one prefill pass may run
BLOCK_SIZE = 8  # positions per KV block: the unit of prefix caching (SmolLM2's chat prompts share 24 tokens)


class Batcher:
    """Decodes submitted requests in one shared batch on a background thread (``start``/``close``).

    ``step_sizes`` records the rows of every decoding step and ``prefill_sizes`` those of every prefill
    pass; ``evictions`` counts rows whose blocks were taken back. Tests and benchmarks read them.
    """

    def __init__(
        self, model: nn.Module, max_batch: int = DEFAULT_MAX_BATCH, capacity: int | None = None,
        kv_cache_mb: float | None = None, prefill_tokens: int = DEFAULT_PREFILL_TOKENS, prefix_cache: bool = True,
    ) -> None:  # fmt: skip
        if model.config.family != "decoder":
            raise LlmkitError(
                f"continuous batching serves decoder-only models; this one is {model.config.family}",
                "serve a decoder-only (GPT-2 / Llama) checkpoint",
            )
        if max_batch < 1:
            raise LlmkitError(f"max_batch={max_batch} must be >= 1", "pass --max-batch 1 or more")
        if prefill_tokens < 1:
            raise LlmkitError(f"prefill_tokens={prefill_tokens} must be >= 1", "pass --prefill-tokens 1 or more")
        self.model, self.max_batch, self.prefill_tokens = model, max_batch, prefill_tokens
        self.prefix_cache = prefix_cache
        self.capacity = capacity or model.config.max_seq_len
        self.tokenizer = getattr(model, "tokenizer", None)
        self.device, self.dtype = next(model.parameters()).device, next(model.parameters()).dtype
        use_decode_layout(model)  # once, before the thread: it re-lays weights out
        if kv_cache_mb is None:  # the default holds at least one request of the whole context window
            window = self.capacity * bytes_per_token(model.config, next(model.parameters()).dtype) / 2**20
            kv_cache_mb = max(DEFAULT_KV_CACHE_MB, window + 1)
        self.cache = PagedKVCache.for_model(model, kv_cache_mb, BLOCK_SIZE)
        self.slots: list[_Slot] = []  # the rows in the batch, prefilling or decoding, oldest first
        self.waiting: deque[_Slot] = deque()  # taken from ``pending``, waiting for a row or for room
        self.pending: queue.Queue[Request | None] = queue.Queue()
        self.step_sizes: list[int] = []
        self.prefill_sizes: list[int] = []
        self.evictions = 0
        self.prefix_hits = 0  # prompt positions taken from the prefix cache instead of computed
        self.on_step: Callable[[int], None] | None = None  # told each step's batch size (the server's metrics)
        self._thread: threading.Thread | None = None
        self._closed = False

    # ---- the caller's side --------------------------------------------------------------------
    def check(self, prompt_len: int, max_new_tokens: int) -> None:
        """Raise unless a prompt of ``prompt_len`` tokens plus ``max_new_tokens`` fits the context window
        and the KV cache."""
        if prompt_len < 1:
            raise LlmkitError("the prompt is empty", "give it some text")
        if prompt_len + max_new_tokens > self.capacity:
            raise LlmkitError(
                f"the prompt has {prompt_len} tokens; {prompt_len} + {max_new_tokens} new tokens exceed the context "
                f"window of {self.capacity}",
                "shorten the prompt or lower max_tokens",
            )
        if prompt_len + max_new_tokens > self.cache.capacity:
            raise LlmkitError(
                f"the prompt has {prompt_len} tokens; {prompt_len} + {max_new_tokens} new tokens exceed the KV "
                f"cache of {self.cache.capacity} positions",
                "shorten the prompt or lower max_tokens (the server's --kv-cache-mb sets the cache)",
            )

    def submit(self, request: Request) -> None:
        """Queue a request; it joins the batch when a row and room for its prompt are free."""
        self.check(len(request.prompt_ids), request.config.max_new_tokens)
        if self._closed:
            raise LlmkitError("the batcher is closed", "start a new one")
        self.pending.put(request)

    def queued(self) -> int:
        """Requests submitted and not yet in the batch."""
        return self.pending.qsize() + len(self.waiting)

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
            self._take(block=not (self.slots or self.waiting))
            self._drop(lambda slot: slot.request.cancelled)
            self.waiting = deque(slot for slot in self.waiting if not slot.request.cancelled)
            self._admit()
            if any(not slot.todo for slot in self.slots):
                self._guarded(self._step, lambda slot: not slot.todo)
            if any(slot.todo for slot in self.slots):
                self._guarded(self._prefill, lambda slot: bool(slot.todo))

    def _guarded(self, run: Callable[[], None], part: Callable[[_Slot], bool]) -> None:
        """``run()``; a failed forward pass fails the requests of the rows it ran (``part`` of the batch), not
        the server."""
        rows = [slot for slot in self.slots if part(slot)]
        try:
            run()
        except Exception as err:
            for slot in rows:
                if slot in self.slots:
                    slot.request.on_error(err)
            self._drop(lambda slot: slot in rows)

    def _take(self, block: bool) -> None:
        while True:
            try:
                request = self.pending.get(block=block)
            except queue.Empty:
                return
            block = False
            if request is not None and not request.cancelled:
                self.waiting.append(_Slot(request, self.tokenizer, self.device))

    def _admit(self) -> None:
        """Waiting rows join, in order, while a row is free and the pool holds their tokens plus a block of
        headroom for each row already decoding."""
        while self.waiting and len(self.slots) < self.max_batch:
            slot = self.waiting[0]
            spare = self.cache.available - len(self.slots)
            if self.cache.blocks_for(len(slot.todo) + 1) > spare and self.slots:
                return
            self._match(slot)
            if not self.cache.grow(slot.table, slot.cached + len(slot.todo)):
                self.cache.release(slot.table)
                slot.evicted()  # as it was: all its tokens to run
                return  # alone in the batch it always fits (check); the rest frees up as rows finish
            self.slots.append(self.waiting.popleft())

    def _match(self, slot: _Slot) -> None:
        """Give a row that has not started reading its prompt the registered blocks of its first tokens (prefix
        caching; its last token is always run). Called at admission and again before its first prefill pass:
        rows that arrive together are admitted before the first of them has registered anything."""
        if not self.prefix_cache or slot.cached or (slot.request.scores_prompt and not slot.started):
            return
        found, digest = self.cache.match(slot.todo, len(slot.todo) - 1)
        if not found:
            return
        unused = slot.table[: len(found)]  # taken at admission, never written
        slot.table[: len(found)] = found
        self.cache.release(unused)
        slot.hashed, slot.digest, slot.cached = len(found), digest, len(found) * self.cache.block_size
        del slot.todo[: slot.cached]
        self.prefix_hits += slot.cached

    def _register(self, slot: _Slot) -> None:
        """Make the row's full blocks findable by later prompts (prefix caching)."""
        bs, tokens = self.cache.block_size, None
        while (slot.hashed + 1) * bs <= slot.cached:
            tokens = tokens or slot.request.prompt_ids + slot.generated  # the cache holds these, in order
            slot.digest = self.cache.digest(slot.digest, tokens[slot.hashed * bs : (slot.hashed + 1) * bs])
            self.cache.register(slot.table[slot.hashed], slot.digest)
            slot.hashed += 1

    @torch.inference_mode()
    def _prefill(self) -> None:
        """Run the next chunk of waiting prompts in one pass, rows x longest chunk <= ``prefill_tokens``."""
        rows = [slot for slot in self.slots if slot.todo]
        for slot in rows:
            self._match(slot)  # what the passes before this one registered
        chunks, width, budget = [], 0, self.prefill_tokens
        for slot in rows:  # oldest first; a row that would widen the pass past the budget gets a narrower chunk
            chunk = min(len(slot.todo), budget)
            if chunks and (len(chunks) + 1) * max(width, chunk) > budget:
                chunk = min(len(slot.todo), width)
                if (len(chunks) + 1) * width > budget:
                    break
            chunks.append(chunk)
            width = max(width, chunk)
        rows = rows[: len(chunks)]
        view = self.cache.view([s.table for s in rows], [s.cached for s in rows], chunks)
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        wanted = torch.zeros(len(rows), width, dtype=torch.bool, device=self.device)  # positions whose logits count
        for r, (slot, n) in enumerate(zip(rows, chunks, strict=True)):
            ids[r, width - n :] = torch.tensor(slot.todo[:n], device=self.device)
            if slot.started:
                continue
            if slot.request.scores_prompt:
                wanted[r, width - n :] = True
            elif n == len(slot.todo):
                wanted[r, -1] = True  # the last prompt token's logits give the first new token
        if not bool(wanted.any()):
            wanted[0, -1] = True  # the head runs on one position rather than none (no kernel sees 0 rows)
        logits = self.model(
            ids, attention_mask=view.attention_mask, position_ids=view.position_ids, cache=view, logits_at=wanted
        ).logits.float()  # (wanted positions, V), row by row
        self.prefill_sizes.append(len(rows))
        counts = wanted.sum(-1).tolist()
        done, first = [], []
        for slot, n, part in zip(rows, chunks, logits.split(counts), strict=True):
            start, slot.cached = slot.cached, slot.cached + n
            del slot.todo[:n]
            if self.prefix_cache:
                self._register(slot)
            if slot.started:
                continue  # re-run after an eviction: its next token is known
            request = slot.request
            try:
                if request.scores_prompt:
                    self._score(slot, part, start)
                if not slot.todo and request.scores_prompt:
                    request.on_prompt(PromptScores(request.prompt_ids, [None, *slot.prompt_logprobs],
                                                   [[], *slot.prompt_top]))  # fmt: skip
            except Exception as err:  # its own scores or callback: it alone ends
                slot.failed = True
                request.on_error(err)
                continue
            if slot.todo:
                continue
            if request.config.max_new_tokens == 0:  # scoring only: on_prompt was its end
                done.append(slot)
            else:
                first.append((slot, part[-1]))
        self._drop(lambda slot: slot in done or slot.failed)
        if first:
            self._emit([slot for slot, _ in first], torch.stack([last for _, last in first]))

    def _score(self, slot: _Slot, logits: torch.Tensor, start: int) -> None:
        """A prompt chunk's scores at positions [start, start + n): position i predicts prompt token i + 1."""
        ids, k = slot.request.prompt_ids, slot.request.logprobs
        if bool(bad_scores(logits).any()):
            raise scores_error()
        n = min(logits.shape[0], len(ids) - 1 - start)  # the last prompt position predicts no prompt token
        logp = logits[:n].log_softmax(-1)
        targets = torch.tensor(ids[start + 1 : start + 1 + n], dtype=torch.long, device=logp.device)
        slot.prompt_logprobs += logp.gather(-1, targets[:, None])[:, 0].tolist()
        if k:
            values, alts = logp.topk(min(k, logp.shape[-1]), dim=-1)
            pairs = zip(alts.tolist(), values.tolist(), strict=True)
            slot.prompt_top += [list(zip(a, v, strict=True)) for a, v in pairs]
        else:
            slot.prompt_top += [[] for _ in range(n)]

    @torch.inference_mode()
    def _step(self) -> None:
        """One new token for every decoding row: one forward pass."""
        rows = self._make_room([slot for slot in self.slots if not slot.todo])
        if not rows:
            return
        view = self.cache.view([s.table for s in rows], [s.cached for s in rows], [1] * len(rows))
        tokens = torch.tensor([[slot.last] for slot in rows], device=self.device)  # (n, 1)
        # torch's CPU SDPA is slow on bf16 for one query per row; the mode's own overhead pays off from 8 rows
        grouped = self.device.type == "cpu" and self.dtype != torch.float32 and len(rows) >= 8
        with OneQueryAttention() if grouped else contextlib.nullcontext():
            out = self.model(tokens, attention_mask=view.attention_mask, position_ids=view.position_ids, cache=view)
        for slot in rows:
            slot.cached += 1
        self.step_sizes.append(len(rows))
        if self.on_step is not None:
            self.on_step(len(rows))
        self._emit(rows, out.logits[:, -1].float())

    def _make_room(self, rows: list[_Slot]) -> list[_Slot]:
        """A cache position for each decoding row's next token; when the pool is out of blocks, the rows that
        joined last give theirs back (``_evict``) until the older ones fit. The rows still decoding."""
        for slot in rows:
            while slot in self.slots and not self.cache.grow(slot.table, slot.cached + 1):
                self._evict(self.slots[-1])
        return [slot for slot in rows if slot in self.slots]

    def _evict(self, slot: _Slot) -> None:
        self.cache.release(slot.table)
        slot.evicted()
        self.slots.remove(slot)
        self.waiting.appendleft(slot)
        self.evictions += 1

    def _emit(self, rows: list[_Slot], logits: torch.Tensor) -> None:
        """Choose each row's next token from its scores (n, V) and send it; finished and failed rows leave."""
        # one pass gives the plain greedy rows' tokens (max returns the first maximum, as argmax) and the bad
        # rows (max is NaN or +inf where any score is): 0.2 ms at 64 rows x 49152, against 8 for two passes
        best, tokens = logits.max(-1)
        bad, picks = (best.isnan() | best.isposinf()).tolist(), tokens.tolist()
        for r, slot in enumerate(rows):
            if not slot.plain and not bad[r] and not slot.request.cancelled:
                try:
                    picks[r] = slot.pick(logits[r : r + 1])
                except Exception as err:  # this row's own failure (its settings or grammar): it alone ends
                    slot.failed, bad[r] = True, True
                    slot.request.on_error(err)
        chosen = torch.tensor(picks, device=logits.device)
        norm = logits.logsumexp(-1, keepdim=True)  # log-probabilities under the model, before any processor
        logprobs = (logits.gather(-1, chosen[:, None]) - norm)[:, 0].tolist()
        most = max(slot.request.logprobs for slot in rows)
        top_ids = top_values = None
        if most:
            values, top_ids = logits.topk(min(most, logits.shape[-1]), dim=-1)
            top_values, top_ids = (values - norm).tolist(), top_ids.tolist()
        for r, slot in enumerate(rows):
            if slot.request.cancelled or slot.failed:
                continue
            try:
                if bad[r]:
                    raise scores_error()
                k = slot.request.logprobs
                top = list(zip(top_ids[r][:k], top_values[r][:k], strict=True)) if k else []
                slot.request.on_token(slot.accept(picks[r], logprobs[r], top))
            except Exception as err:  # this row's own failure (its scores or callback): it alone ends
                slot.failed = True
                slot.request.on_error(err)
        self._drop(lambda slot: slot.request.cancelled or slot.failed or slot.sequence.finish_reason is not None)

    def _drop(self, gone: Callable[[_Slot], bool]) -> None:
        """Remove the rows ``gone`` says, their blocks back to the pool."""
        for slot in [slot for slot in self.slots if gone(slot)]:
            self.cache.release(slot.table)
            self.slots.remove(slot)
