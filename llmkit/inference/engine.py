"""The decoding engine: ``stream`` yields pieces as tokens are drawn; ``generate`` collects them.

Order of operations, per call: resolve the config (the model's generation_config < ``config`` <
keyword overrides) -> tokenize and fit the prompts to the context window -> pad (left for
decoder-only, right for the encoder) -> prefill the KV cache -> per step: logit bias -> repetition
penalty -> presence/frequency penalties -> EOS masked below min_new_tokens -> [with a grammar] tokens
it forbids masked -> greedy argmax, or temperature -> top-k -> top-p -> min-p -> draw -> per row: stop
at EOS, a stop string, max_new_tokens, or a complete grammar (``constrained.py``: JSON schema, regex or
Lark; finish_reason "stop"). Beam search (num_beams > 1) runs the whole search first and then yields
one piece per returned sequence; there stop strings cut the returned text (the search itself ends at
EOS or max_new_tokens).

Speed (gpt-fast style): one preallocated KV cache per call, one inference-mode block and one
device-to-host copy of the chosen tokens per step, nothing else per token. On CPU the model's
Linear weights are re-laid out once (``use_decode_layout``) for the one-row matmuls of decoding;
values and names do not change. ``compile=True`` runs each step after the prompt as one
torch.compile'd graph (``compiled.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError
from llmkit.inference.beam import beam_search
from llmkit.inference.constrained import Grammar, RowGrammars, choose_grammar
from llmkit.inference.inputs import PromptInput, Prompts, pad, prepare_prompts
from llmkit.inference.loading import require_lm_head
from llmkit.inference.native import unsupported as native_unsupported
from llmkit.inference.runners import DecoderRunner, EncoderDecoderRunner, use_decode_layout
from llmkit.inference.sampling import apply_processors, bias_tensor, next_tokens
from llmkit.inference.text import CompletionText

# called once per step with (step, processed scores (R, V), chosen tokens (R,)); explain() records them
Observer = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class Piece:
    """What one step adds to one sequence: its text (may be "" while a character is incomplete or a
    stop string may be starting) and token ids. The last piece of a sequence has a finish_reason:
    "eos", "stop" (a stop string) or "length" (max_new_tokens)."""

    index: int  # sequence number: prompt index * num_return_sequences + j
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class Completion:
    """One generated sequence: the new text and tokens (EOS included) after its prompt."""

    index: int
    prompt_index: int
    prompt: str | None
    prompt_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class Timings:
    """The engine's own clock (``time.perf_counter`` seconds), read where the work happens: ``start`` before the
    KV cache is built and the prompts run, ``first`` when every row's first token is on the host (prefill plus
    one choice: the time to first token), ``end`` when the last token is. ``generated`` counts every token
    drawn for a sequence (EOS included, padding of finished rows not), ``first_tokens`` those of the first
    step. Beam search yields at the end only, so there ``first`` is ``end``."""

    prompt_tokens: int = 0  # the prompts' tokens after fitting (each prompt once)
    start: float | None = None
    first: float | None = None
    end: float | None = None
    generated: int = 0
    first_tokens: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first is None or self.start is None else self.first - self.start

    @property
    def decode_seconds(self) -> float | None:
        """Seconds after the first token: the steps that each feed one token back through the cache."""
        return None if self.end is None or self.first is None else self.end - self.first

    @property
    def decode_tokens(self) -> int:
        return self.generated - self.first_tokens


def resolve_config(model: nn.Module, config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    """``config`` (default: the model's generation_config) with ``overrides`` applied and checked."""
    require_lm_head(model, "generate")
    base = config or getattr(model, "generation_config", None) or GenerationConfig.for_model(model.config)
    cfg = base.replace(**overrides) if overrides else base
    if model.config.family == "encoder":
        if model.config.encoder_head != "mlm":
            from llmkit.inference.fill_mask import NO_MLM_HEAD_HINT

            raise LlmkitError("encoder-only models do not generate text", NO_MLM_HEAD_HINT)
        raise LlmkitError("encoder-only models do not generate text", "use fill_mask (llmkit fill-mask) instead")
    if cfg.num_return_sequences > 1 and not cfg.do_sample and cfg.num_beams == 1:
        raise LlmkitError(
            f"num_return_sequences={cfg.num_return_sequences} with greedy decoding returns the same text each time",
            "set do_sample=True (--do-sample) or num_beams >= num_return_sequences",
        )
    if cfg.num_beams > 1 and (cfg.presence_penalty or cfg.frequency_penalty or cfg.logit_bias):
        raise LlmkitError(
            "presence_penalty, frequency_penalty and logit_bias apply to greedy decoding and sampling only",
            "drop them or use num_beams=1",
        )
    if cfg.stop_strings and getattr(model, "tokenizer", None) is None:
        raise LlmkitError("stop strings need a tokenizer and this model has none", "drop stop_strings")
    return cfg


class Stream:
    """Iterator of ``Piece`` for a batch of prompts; prompts and config are checked on creation."""

    def __init__(
        self,
        model: nn.Module,
        prompts: PromptInput,
        config: GenerationConfig | None = None,
        observer: Observer | None = None,
        constraint: Grammar | list[Grammar | None] | None = None,
        skip_leading_whitespace: bool = False,
        **overrides: Any,
    ) -> None:
        self.model = model
        # True: stop strings are not matched in a completion's leading whitespace (text.CompletionText), as
        # evaluation needs; off for generate and serve, where a stop string at the start is a stop
        self.skip_leading_whitespace = skip_leading_whitespace
        self.config = resolve_config(model, config, overrides)
        self.prompts: Prompts = prepare_prompts(model, prompts, self.config)
        self.observer = observer
        cfg, mcfg = self.config, model.config
        self.eos = list(cfg.eos_token_id)
        fallback = self.eos[0] if self.eos else 0
        self.pad_id = next(i for i in (cfg.pad_token_id, mcfg.pad_token_id, fallback) if i is not None)
        self.per_prompt = cfg.num_beams if cfg.num_beams > 1 else cfg.num_return_sequences
        start = cfg.decoder_start_token_id
        self.start_id = mcfg.decoder_start_token_id if start is None else start
        # what the repetition penalty counts as already in each prompt's sequence at the first step
        encdec = mcfg.family == "encoder_decoder"
        self._prefix = [[self.start_id] for _ in self.prompts.ids] if encdec else self.prompts.ids
        self.grammars = self._row_grammars(constraint)
        self.timings = Timings(prompt_tokens=sum(len(ids) for ids in self.prompts.ids))

    def _row_grammars(self, constraint: Grammar | list[Grammar | None] | None) -> RowGrammars | None:
        """One grammar for every prompt, or one per prompt (None: free), checked and compiled per row."""
        if constraint is None or (isinstance(constraint, list) and not any(constraint)):
            return None
        if self.config.num_beams > 1:
            raise LlmkitError("constrained decoding works with greedy decoding and sampling, not beam search",
                              "set num_beams=1")  # fmt: skip
        per_prompt = constraint if isinstance(constraint, list) else [constraint] * len(self.prompts.ids)
        if len(per_prompt) != len(self.prompts.ids):
            raise LlmkitError(f"{len(per_prompt)} grammars for {len(self.prompts.ids)} prompts",
                              "give one grammar, or one per prompt (None for a free one)")  # fmt: skip
        rows = [g for g in per_prompt for _ in range(self.per_prompt)]
        return RowGrammars(self.model, rows, self.eos)

    def __iter__(self) -> Iterator[Piece]:
        if self.config.max_new_tokens == 0:
            n = len(self.prompts.ids) * self.config.num_return_sequences
            return iter([Piece(i, "", [], "length") for i in range(n)])
        return self._beam_pieces() if self.config.num_beams > 1 else self._sampled_pieces()

    # ---- setup --------------------------------------------------------------------------------
    def _runner(self):
        """Padded prompts, each repeated per_prompt times, in a runner with a cache of the right size."""
        family, n, compile = self.model.config.family, self.per_prompt, self.config.compile
        if family == "encoder_decoder":
            use_decode_layout(self.model, compiled=compile)
            ids, mask = pad(self.prompts.ids, self.pad_id, left=False)
            return EncoderDecoderRunner(self.model, ids, mask, self.config.max_new_tokens, n, self.start_id, compile)
        ids, mask = pad(self.prompts.ids, self.pad_id, left=True)
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        # batch-1 steps of a Llama-family model run in C where they can (llmkit.inference.native), which reads
        # row-major weights, the compiled step's layout
        native = native_unsupported(self.model, ids.shape[0], not bool(mask.all())) is None
        use_decode_layout(self.model, compiled=compile or native)
        return DecoderRunner(self.model, ids, mask, self.config.max_new_tokens, compile, native=native)

    def _seen(self, rows: int, vocab: int, device: torch.device) -> torch.Tensor | None:
        """Tokens the repetition penalty applies to at the first step (bool (R, V)): the real prompt
        tokens of a decoder-only model, the decoder start token of an encoder-decoder (as transformers)."""
        if self.config.repetition_penalty == 1.0:
            return None
        seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        for r in range(rows):
            seen[r, self._prefix[r // self.per_prompt]] = True
        return seen

    def _sequences(self) -> list[SequenceState]:
        """One per returned sequence. A causal model's text continues its prompt, so the prompt is the
        decoding context; an encoder-decoder's output starts fresh."""
        tokenizer = getattr(self.model, "tokenizer", None)
        n, causal = self.config.num_return_sequences, self.model.config.family == "decoder"
        contexts = [ids if causal else [] for ids in self.prompts.ids]
        skip = self.skip_leading_whitespace
        return [SequenceState(i, contexts[i // n], tokenizer, self.config, skip) for i in range(len(contexts) * n)]

    # ---- greedy and sampling ------------------------------------------------------------------
    def _sampled_pieces(self) -> Iterator[Piece]:
        cfg, seqs, clock = self.config, self._sequences(), self.timings
        clock.start = time.perf_counter()
        with torch.inference_mode():
            runner = self._runner()
            logits = runner.prefill()
            device = logits.device
            eos_t = torch.tensor(self.eos, dtype=torch.long, device=device)
            generator = torch.Generator(device).manual_seed(cfg.seed) if cfg.seed is not None else None
            seen = self._seen(runner.rows, logits.shape[-1], device)
            bias = bias_tensor(cfg.logit_bias, logits.shape[-1], device)
            # OpenAI's penalties count generated tokens only
            penalize = bool(cfg.presence_penalty or cfg.frequency_penalty)
            counts = torch.zeros(runner.rows, logits.shape[-1], device=device) if penalize else None
            done = torch.zeros(runner.rows, dtype=torch.bool, device=device)
            tokens = torch.zeros(runner.rows, dtype=torch.long, device=device)
        constraint = self.grammars.start() if self.grammars is not None else None
        finished: list[int] = []
        for t in range(cfg.max_new_tokens):
            with torch.inference_mode():  # one entry per step: tensors never leave inference mode
                # feed the previous tokens back (rows that just finished get padding from now on)
                if t > 0:
                    if finished:
                        done[finished] = True
                    if seen is not None:
                        seen.scatter_(1, tokens[:, None], True)
                    if counts is not None:
                        counts.scatter_add_(1, tokens[:, None], torch.ones_like(counts[:, :1]))
                    logits = runner.step(tokens)
                # choose each row's next token
                early = eos_t if t < cfg.min_new_tokens and self.eos else None
                scores = apply_processors(logits, cfg, bias, seen, counts, early)
                if constraint is not None:
                    scores = constraint.mask(scores)
                tokens = next_tokens(scores, cfg, generator).masked_fill_(done, self.pad_id)
                if self.observer is not None:
                    self.observer(t, scores, tokens)
            # per row: text piece; stop at EOS, a stop string or max_new_tokens
            ids, finished = tokens.tolist(), []  # the host copy waits for the device: the step's real end
            clock.end = time.perf_counter()
            live = sum(seq.finish_reason is None for seq in seqs)
            clock.generated += live
            if t == 0:
                clock.first, clock.first_tokens = clock.end, live
            complete = constraint.advance(ids) if constraint is not None else []
            for r, seq in enumerate(seqs):
                if seq.finish_reason is None:
                    yield seq.push(ids[r], end="stop" if r in complete else None)
                    if seq.finish_reason is not None:
                        finished.append(r)
            if constraint is not None:
                constraint.release(finished)
            if all(seq.finish_reason is not None for seq in seqs):
                return

    # ---- beam search --------------------------------------------------------------------------
    def _beam_pieces(self) -> Iterator[Piece]:
        clock = self.timings
        clock.start = time.perf_counter()
        with torch.inference_mode():
            runner = self._runner()
            device = next(self.model.parameters()).device
            seen = self._seen(runner.rows, self.model.config.vocab_size, device)
            results = beam_search(runner, len(self.prompts.ids), self.config, self.eos, self.pad_id, seen)
        clock.first = clock.end = time.perf_counter()
        clock.generated = clock.first_tokens = sum(len(ids) for ids, _score in results)
        for seq, (ids, _score) in zip(self._sequences(), results, strict=True):
            yield seq.push_all(ids)


class SequenceState:
    """One sequence being generated: its token count, text and why it ended."""

    def __init__(
        self, index: int, context: list[int], tokenizer, config: GenerationConfig, skip_leading_whitespace: bool = False
    ) -> None:
        self.index, self.max_new, self.eos = index, config.max_new_tokens, set(config.eos_token_id)
        self.text = None
        if tokenizer is not None:
            self.text = CompletionText(tokenizer, context, config.stop_strings, skip_leading_whitespace)
        self.count = 0
        self.finish_reason: str | None = None

    def push(self, token: int, end: str | None = None) -> Piece:
        """One new token -> its piece; sets finish_reason when the sequence ends here (``end``: it ends for
        a reason outside the sequence, such as a complete grammar, unless EOS or a stop string ends it first)."""
        self.count += 1
        text = ""
        if token in self.eos:
            self.finish_reason = "eos"
        elif self.text is not None:
            text, stopped = self.text.push([token])
            self.finish_reason = "stop" if stopped else None
        ended_outside = self.finish_reason is None and end is not None
        if ended_outside:
            self.finish_reason = end
        if self.finish_reason is None and self.count == self.max_new:
            self.finish_reason = "length"
        if (ended_outside or self.finish_reason in ("eos", "length")) and self.text is not None:
            text += self.text.flush()
        return Piece(self.index, text, [token], self.finish_reason)

    def push_all(self, ids: list[int]) -> Piece:
        """A whole finished sequence (beam search) as one piece; text ends at EOS or a stop string."""
        body = ids[:-1] if ids and ids[-1] in self.eos else ids
        text, stopped = self.text.push(body) if self.text is not None else ("", False)
        if not stopped and self.text is not None:
            text += self.text.flush()
        reason = "stop" if stopped else "eos" if len(body) < len(ids) else "length"
        return Piece(self.index, text, ids, reason)


def stream(
    model: nn.Module,
    prompts: PromptInput,
    config: GenerationConfig | None = None,
    *,
    json_schema: dict[str, Any] | bool | str | None = None,
    regex: str | None = None,
    grammar: str | Grammar | list[Grammar | None] | None = None,
    **overrides: Any,
) -> Stream:
    """Generate from ``prompts``, yielding a ``Piece`` (text and token ids) per new token of each sequence.

    ``config`` defaults to ``model.generation_config``; keyword ``overrides`` change single settings
    (``max_new_tokens=32, do_sample=True, seed=0``); ``skip_leading_whitespace=True`` (evaluation) never
    matches a stop string inside a completion's leading whitespace. Pieces of one sequence concatenate to its
    completion; with several prompts the pieces of a step come in sequence order. Beam search yields
    one piece per sequence at the end. The returned ``Stream`` also carries ``prompts`` and ``config``.

    At most one of ``json_schema`` (a dict or JSON text), ``regex`` or ``grammar`` (Lark text, a
    ``Grammar``, or a list with one ``Grammar`` or None per prompt) constrains every sequence to match it
    (llguidance; ``constrained.py``); a sequence then also ends when its grammar is complete ("stop").
    """
    constraint = grammar if isinstance(grammar, list) else choose_grammar(json_schema, regex, grammar)
    return Stream(model, prompts, config, constraint=constraint, **overrides)


def generate(
    model: nn.Module,
    prompts: PromptInput,
    config: GenerationConfig | None = None,
    *,
    json_schema: dict[str, Any] | bool | str | None = None,
    regex: str | None = None,
    grammar: str | Grammar | list[Grammar | None] | None = None,
    **overrides: Any,
) -> list[Completion]:
    """``stream`` run to the end: one ``Completion`` per sequence (prompt-major, num_return_sequences each)."""
    s = stream(model, prompts, config, json_schema=json_schema, regex=regex, grammar=grammar, **overrides)
    return collect(s, list(s))


def collect(s: Stream, pieces: list[Piece]) -> list[Completion]:
    """Join the pieces of each sequence of ``s`` into completions."""
    n = s.config.num_return_sequences
    count = len(s.prompts.ids) * n
    texts, ids, reasons = [[] for _ in range(count)], [[] for _ in range(count)], ["length"] * count
    for p in pieces:
        texts[p.index].append(p.text)
        ids[p.index].extend(p.token_ids)
        reasons[p.index] = p.finish_reason or reasons[p.index]
    return [
        Completion(i, i // n, s.prompts.texts[i // n], s.prompts.ids[i // n], "".join(texts[i]), ids[i], reasons[i])
        for i in range(count)
    ]
