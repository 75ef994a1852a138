"""Zero-, one- and few-shot prompts: render examples with a template, pick them, fit them to a window.

A prompt is the instruction, then k solved examples (demonstrations), then the query with its
answer cue left open::

    Classify the sentiment of each review.      <- instruction

    Review: a gorgeous, witty film              <- template with {input}
    Sentiment: positive                         <- answer cue + delimiter + answer

    Review: dull and overlong
    Sentiment:                                  <- the model continues from here

Order of operations in ``build_prompt``: pick k examples (``select_examples``: seeded random, or
balanced across labels) -> render the prompt with all k -> count its tokens with the model's own
tokenizer -> while it does not fit the context window, drop the last example -> with none left, an
error with the token counts. Token counting is a ``count_tokens`` callable, so this module stays
standard library only (L0) and never loads torch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmkit.errors import LlmkitError

SELECTIONS = ("random", "balanced")


class PromptTooLong(LlmkitError):
    """The query alone (no demonstrations) does not fit the window; the evaluator skips such items."""

    def __init__(self, tokens: int, reserve: int, window: int) -> None:
        answer = f" + {reserve} for the answer" if reserve else ""
        super().__init__(
            f"the input alone does not fit: the 0-shot prompt has {tokens} tokens{answer} = {tokens + reserve}, "
            f"over the context window of {window}",
            "shorten the input (or the instruction), or use a model with a longer context window",
        )
        self.tokens, self.reserve, self.window = tokens, reserve, window


@dataclass(frozen=True)
class Example:
    """One solved example: ``answer`` is what follows the cue (a label word, a summary, a translation);
    ``label`` is the class it belongs to (for balanced selection), None for generation tasks."""

    input: str
    answer: str
    label: str | None = None


@dataclass(frozen=True)
class PromptFormat:
    """How examples become text. An example renders as
    ``template.format(input=...) + cue_separator + answer_cue + answer_delimiter + answer``;
    the query stops after ``answer_cue``, and the model's answer is ``answer_delimiter + answer``."""

    instruction: str = ""
    template: str = "{input}"
    answer_cue: str = "Answer:"
    cue_separator: str = "\n"  # between the example's input and its answer cue
    answer_delimiter: str = " "  # between the cue and the answer (part of the scored continuation)
    example_separator: str = "\n\n"  # between examples, and after the instruction

    def __post_init__(self) -> None:
        try:
            self.template.format(input="")
        except (KeyError, IndexError, ValueError) as err:
            raise LlmkitError(
                f"template {self.template!r} is not a valid format string with {{input}} ({err!r})",
                "write the template with one {input} placeholder; double literal braces as {{ and }}",
            ) from None
        if "{input}" not in self.template:
            raise LlmkitError(f"template {self.template!r} has no {{input}} placeholder", 'e.g. "Review: {input}"')


def render_query(fmt: PromptFormat, text: str) -> str:
    """The query: its input in the template, then the open answer cue."""
    return fmt.template.format(input=text) + fmt.cue_separator + fmt.answer_cue


def render_example(fmt: PromptFormat, example: Example) -> str:
    """A solved example: the query text followed by its answer."""
    return render_query(fmt, example.input) + continuation(fmt, example.answer)


def continuation(fmt: PromptFormat, answer: str) -> str:
    """What the model should produce after the prompt: the delimiter and the answer (" positive")."""
    return fmt.answer_delimiter + answer


def render_prompt(fmt: PromptFormat, examples: Sequence[Example], query: str) -> str:
    """Instruction, the examples in order, then the query, joined by ``example_separator``."""
    parts = [fmt.instruction] if fmt.instruction else []
    parts += [render_example(fmt, e) for e in examples]
    parts.append(render_query(fmt, query))
    return fmt.example_separator.join(parts)


# ---- choosing examples ------------------------------------------------------------------------
def select_examples(pool: Sequence[Example], k: int, rng: random.Random, selection: str = "random") -> list[Example]:
    """``k`` distinct examples from ``pool``, in the order they will be shown.

    - "random": a uniform sample without replacement.
    - "balanced": ``k // L`` examples of each of the L labels, the remaining ``k % L`` from labels
      drawn at random (so no label is favoured on average), then shuffled together, so the last
      example (the one nearest the query, which models copy most) is not always the same label.
    """
    if selection not in SELECTIONS:
        raise LlmkitError(f"unknown example selection {selection!r}", f"choose one of {', '.join(SELECTIONS)}")
    if k < 0:
        raise LlmkitError(f"shots={k} must be >= 0", "use 0 for zero-shot")
    if k > len(pool):
        raise LlmkitError(f"{k} shots asked but the example pool holds {len(pool)}", "lower the shots")
    if k == 0:
        return []
    if selection == "random":
        return rng.sample(list(pool), k)
    return _balanced(pool, k, rng)


def _balanced(pool: Sequence[Example], k: int, rng: random.Random) -> list[Example]:
    by_label: dict[str, list[Example]] = {}
    for e in pool:
        if e.label is None:
            raise LlmkitError("balanced selection needs labelled examples", "use random selection for this task")
        by_label.setdefault(e.label, []).append(e)
    labels = sorted(by_label)
    counts = dict.fromkeys(labels, k // len(labels))
    for label in rng.sample(labels, k % len(labels)):
        counts[label] += 1
    short = [f"{label} ({len(by_label[label])} < {n})" for label, n in counts.items() if n > len(by_label[label])]
    if short:
        raise LlmkitError(f"too few examples of label {', '.join(short)} for {k} balanced shots", "lower the shots")
    chosen = [e for label in labels for e in rng.sample(by_label[label], counts[label])]
    rng.shuffle(chosen)
    return chosen


# ---- fitting the context window ---------------------------------------------------------------
@dataclass
class Prompt:
    """A rendered prompt: its text and token count, the examples it shows, and how many of the
    requested examples were dropped to fit ``window`` (``reserve`` tokens kept free for the answer)."""

    text: str
    tokens: int
    examples: list[Example] = field(default_factory=list)
    requested: int = 0
    window: int | None = None
    reserve: int = 0

    @property
    def dropped(self) -> int:
        return self.requested - len(self.examples)

    def summary(self) -> str:
        """One line: shots shown, drops, tokens against the window."""
        line = f"{len(self.examples)}-shot prompt, {self.tokens} tokens"
        if self.window is not None:
            line += f" of a {self.window}-token context window"
            if self.reserve:
                line += f" ({self.reserve} kept for the answer)"
        if self.dropped:
            line += f"; dropped {self.dropped} of {self.requested} examples to fit"
        return line


def build_prompt(
    fmt: PromptFormat,
    examples: Sequence[Example],
    query: str,
    count_tokens: Callable[[str], int] | None = None,
    window: int | None = None,
    reserve: int = 0,
) -> Prompt:
    """The prompt with as many of ``examples`` (a prefix, in order) as fit ``window - reserve`` tokens.

    Order: render with all examples -> count -> drop the last example and re-render while too long
    -> if even the bare query (instruction included) is too long, raise ``PromptTooLong`` with the
    counts. Without
    ``count_tokens`` or ``window`` nothing is counted or dropped (``tokens`` is then 0).
    """
    examples = list(examples)
    if count_tokens is None or window is None:
        return Prompt(render_prompt(fmt, examples, query), 0, examples, len(examples))
    budget = window - reserve
    for n in range(len(examples), -1, -1):
        text = render_prompt(fmt, examples[:n], query)
        tokens = count_tokens(text)
        if tokens <= budget:
            return Prompt(text, tokens, examples[:n], len(examples), window, reserve)
    raise PromptTooLong(tokens, reserve, window)
