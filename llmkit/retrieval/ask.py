"""Retrieval-augmented question answering: numbered sources in the prompt, the answer cites them.

Order: retrieve k chunks -> render the user message (instruction, ``[1] (file:start-end)`` + text per
source, the question) -> render it through the chat template (a callable, so this module needs no
server code) -> count tokens with the generator's tokenizer -> while the prompt and ``reserve`` answer
tokens pass the window, drop the lowest-ranked source (as llmkit.prompts.build_prompt drops the last
example) -> when not even the best source fits, an error with the counts (``PromptTooLong`` when the
question alone does not fit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmkit.errors import LlmkitError
from llmkit.prompts import PromptTooLong
from llmkit.retrieval.store import Hit

INSTRUCTION = (
    "Answer the question using only the numbered sources below. Cite the sources you use by their "
    "numbers in brackets, like [1]. If the sources do not contain the answer, say so."
)


@dataclass
class RagPrompt:
    """The rendered prompt, its token count, and the sources it shows (numbered from 1 in this order)."""

    text: str
    tokens: int
    sources: list[Hit]
    retrieved: int

    @property
    def dropped(self) -> int:
        return self.retrieved - len(self.sources)


def user_message(question: str, sources: list[Hit]) -> str:
    """The instruction, the numbered sources with their citations, then the question."""
    blocks = [f"[{n}] ({hit.citation()})\n{hit.text.strip()}" for n, hit in enumerate(sources, start=1)]
    return f"{INSTRUCTION}\n\nSources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}"


def build_rag_prompt(
    question: str,
    hits: list[Hit],
    render: Callable[[str], str],
    count_tokens: Callable[[str], int],
    window: int,
    reserve: int,
) -> RagPrompt:
    """The prompt with as many of ``hits`` (best first) as fit ``window - reserve`` tokens once ``render``ed;
    at least one must fit (an answer without sources is not what was asked for)."""
    if not hits:
        raise LlmkitError("the index returned no sources", "add documents to the index (llmkit index add)")
    for n in range(len(hits), 0, -1):
        text = render(user_message(question, hits[:n]))
        tokens = count_tokens(text)
        if tokens + reserve <= window:
            return RagPrompt(text, tokens, list(hits[:n]), len(hits))
    bare = count_tokens(render(user_message(question, [])))
    if bare + reserve > window:
        raise PromptTooLong(bare, reserve, window)
    raise LlmkitError(
        f"not even the best source fits: the prompt with it has {tokens} tokens + {reserve} for the answer, over "
        f"the context window of {window}",
        "lower --max-new-tokens, rebuild the index with smaller --chunk-tokens, or use a model with a longer window",
    )


def cited(answer: str, sources: list[Hit]) -> list[tuple[int, Hit]]:
    """The sources the answer names as ``[n]``, in number order (small models often cite none)."""
    named = sorted({n for n in range(1, len(sources) + 1) if f"[{n}]" in answer})
    return [(n, sources[n - 1]) for n in named]
