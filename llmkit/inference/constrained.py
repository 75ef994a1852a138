"""Constrained decoding: each row's output must match a JSON schema, a regular expression or a Lark grammar.

The grammar engine is llguidance (Microsoft's, used by guidance and llama.cpp): from the tokenizer's
vocabulary and a grammar it computes, per step, the set of tokens that keep the output a prefix of some
string the grammar accepts (a bitmask, one bit per token id). Per row and step:

    scores after the other processors (repetition penalty, EOS masked below min_new_tokens)
    -> tokens outside the grammar's mask get -inf -> greedy argmax or the sampling warpers -> draw
    -> the matcher consumes the chosen token -> the row ends when the grammar accepts and allows no
       continuation (``finish_reason="stop"``), or at EOS (which the mask admits only where the grammar accepts).

So the output parses whenever the row ends by the grammar or by EOS; only ``max_new_tokens`` can cut it
short (``finish_reason="length"``), as with OpenAI's API.

JSON is compiled compactly, with the separators of Python's ``json.dumps`` (", " and ": ") and no other
whitespace: llguidance's default admits any whitespace between tokens, and a weak model then spends its
tokens on newlines and tabs (a random-weight model did nothing else).
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llmkit.errors import LlmkitError

# llguidance JSON options: compact output, as json.dumps writes it (see the module docstring)
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
KINDS = ("json_schema", "regex", "lark")

_SCHEMA_HINT = "check the schema's syntax and keywords (llguidance supports most of JSON Schema draft 2020-12)"


@dataclass(frozen=True)
class Grammar:
    """What a completion must match: ``kind`` is "json_schema", "regex" or "lark"; ``source`` its text."""

    kind: str
    source: str

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool | str) -> Grammar:
        """A JSON schema given as a dict (or True/False) or as JSON text."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as err:
                raise LlmkitError(f"the JSON schema is not JSON: {err}", "pass a JSON object") from None
        if not isinstance(schema, dict | bool):
            raise LlmkitError(f"a JSON schema is an object, not {type(schema).__name__}", "pass a JSON object")
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        """A regular expression (Rust regex syntax) the whole output must match."""
        return cls("regex", pattern)

    @classmethod
    def lark(cls, text: str) -> Grammar:
        """A Lark grammar (llguidance's dialect: https://github.com/guidance-ai/llguidance/blob/main/docs/syntax.md)."""
        return cls("lark", text)

    def compiled(self) -> str:
        """llguidance's grammar text for this grammar (not yet checked: ``Constraint`` checks it)."""
        from llguidance import LLMatcher

        if self.kind == "json_schema":
            return LLMatcher.grammar_from_json_schema(self.source, overrides=JSON_OPTIONS)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.source)
        if self.kind == "lark":
            return LLMatcher.grammar_from_lark(self.source)
        raise LlmkitError(f"unknown grammar kind {self.kind!r}", f"use one of {KINDS}")

    @property
    def label(self) -> str:
        return {"json_schema": "JSON schema", "regex": "regex", "lark": "Lark grammar"}[self.kind]


def choose_grammar(
    json_schema: dict[str, Any] | bool | str | None = None,
    regex: str | None = None,
    grammar: str | Grammar | None = None,
) -> Grammar | None:
    """At most one of ``json_schema``, ``regex`` or ``grammar`` (Lark text or a ``Grammar``) -> a Grammar."""
    given = [(k, v) for k, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar)) if v is not None]
    if len(given) > 1:
        names = " and ".join(k for k, _ in given)
        raise LlmkitError(f"{names} given together", "constrain the output with one of them")
    if not given:
        return None
    kind, value = given[0]
    if isinstance(value, Grammar):
        return value
    if kind == "json_schema":
        return Grammar.json_schema(value)
    if not isinstance(value, str):
        raise LlmkitError(f"{kind} must be a string, not {type(value).__name__}", "pass the pattern as text")
    return Grammar.regex(value) if kind == "regex" else Grammar.lark(value)


# LLTokenizer per (llmkit Tokenizer, vocabulary size, EOS ids): building one walks the whole vocabulary
_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ll_tokenizer(tokenizer, vocab_size: int, eos: list[int]):
    """llguidance's view of an llmkit ``Tokenizer`` with the model's ``vocab_size`` (ids past the tokenizer's
    are never allowed) and the EOS ids the engine stops at (allowed where the grammar accepts)."""
    from llguidance import LLTokenizer

    per_tokenizer = _TOKENIZERS.setdefault(tokenizer, {})
    key = (vocab_size, tuple(eos))
    if key not in per_tokenizer:
        try:
            per_tokenizer[key] = LLTokenizer(tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=list(eos))
        except ValueError as err:
            raise LlmkitError(f"the grammar engine cannot read this tokenizer: {err}", "drop the constraint") from None
    return per_tokenizer[key]


def check_grammar(grammar: Grammar, lltok) -> str:
    """``grammar`` compiled for ``lltok``, or a one-line LlmkitError naming what the engine could not compile."""
    from llguidance import LLMatcher

    try:
        text = grammar.compiled()
    except ValueError as err:
        raise LlmkitError(f"the {grammar.label} cannot be compiled: {_first_line(err)}", _SCHEMA_HINT) from None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(text, lltok)
    if is_error:
        hint = _SCHEMA_HINT if grammar.kind == "json_schema" else f"fix the {grammar.label}"
        raise LlmkitError(f"the {grammar.label} cannot be compiled: {_first_line(messages[0])}", hint)
    return text


def _first_line(message: object) -> str:
    """The engine's message on one line (its parse errors span several, with a caret under the column)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else "no reason given"


class RowGrammars:
    """The checked, compiled grammars of a decoding batch, one per row (rows of a prompt share its grammar;
    None = unconstrained). Checking happens here, once, so a bad grammar fails before any decoding."""

    def __init__(self, model, row_grammars: list[Grammar | None], eos: list[int]) -> None:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise LlmkitError("constrained decoding needs the model's tokenizer and this model has none",
                              "load a checkpoint saved with its tokenizer")  # fmt: skip
        if not eos:
            raise LlmkitError("constrained decoding needs an EOS token id and the generation config has none",
                              "set eos_token_id in generation_config.json")  # fmt: skip
        self.vocab_size = model.config.vocab_size
        self.lltok = ll_tokenizer(tokenizer, self.vocab_size, eos)
        compiled: dict[Grammar, str] = {}
        for grammar in row_grammars:
            if grammar is not None and grammar not in compiled:
                compiled[grammar] = check_grammar(grammar, self.lltok)
        self.texts = [None if g is None else compiled[g] for g in row_grammars]

    def start(self) -> Constraint:
        """Fresh matchers at the start of every row's grammar."""
        return Constraint(self)


class Constraint:
    """One llguidance matcher per row of a decoding batch, from ``RowGrammars.start()``.

    ``mask(scores)`` sets -inf on each constrained row's disallowed tokens; ``advance(tokens)`` feeds the
    chosen tokens to the matchers and returns the rows whose grammar is complete (no continuation allowed).
    """

    def __init__(self, grammars: RowGrammars) -> None:
        from llguidance import LLExecutor, LLMatcher

        self.matchers = [None if t is None else LLMatcher(grammars.lltok, t, log_level=0) for t in grammars.texts]
        self.active = [m is not None for m in self.matchers]
        words = (grammars.vocab_size + 31) // 32
        self._bits = torch.full((len(self.matchers), words), -1, dtype=torch.int32)  # CPU: llguidance writes it
        # several rows: llguidance computes their masks in parallel threads, without the GIL
        self._executor = LLExecutor() if sum(self.active) > 1 else None

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (R, V) with -inf where an active row's grammar forbids the token (a new tensor)."""
        rows = [(m, r) for r, m in enumerate(self.matchers) if self.active[r]]
        if not rows:
            return scores
        self._bits.fill_(-1)  # inactive rows: every token allowed
        row_bytes = self._bits.shape[1] * 4
        if self._executor is not None:
            self._executor.unsafe_compute_mask_ptr(rows, self._bits.data_ptr(), row_bytes, len(self._bits))
        else:
            m, r = rows[0]
            m.unsafe_compute_mask_ptr(self._bits[r].data_ptr(), row_bytes)
        # bit i of word w allows token 32 * w + i: in the words' little-endian bytes, bit i % 8 of byte 4w + i // 8
        words = self._bits.numpy().astype("<i4", copy=False).view(np.uint8)
        bits = np.unpackbits(words, axis=1, bitorder="little")[:, : scores.shape[-1]]
        return scores.masked_fill(torch.from_numpy(bits).to(scores.device) == 0, float("-inf"))

    def advance(self, tokens: list[int]) -> list[int]:
        """Consume each active row's token; rows whose grammar is now complete are returned and leave the
        constraint (as do rows the engine reports finished through ``release``)."""
        complete = []
        for r, m in enumerate(self.matchers):
            if not self.active[r]:
                continue
            if not m.consume_token(tokens[r]) or m.is_error():
                raise LlmkitError(f"constrained decoding failed at row {r}: {_first_line(m.get_error())}",
                                  "report this with the grammar and prompt")  # fmt: skip
            if m.is_stopped():
                complete.append(r)
                self.active[r] = False
        return complete

    def release(self, rows: list[int]) -> None:
        """Stop constraining ``rows`` (they ended at EOS, a stop string or max_new_tokens)."""
        for r in rows:
            self.active[r] = False
