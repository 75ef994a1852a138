"""Text of generated tokens, piece by piece: whole characters only, and stop strings cut off.

Byte-level BPE splits a multi-byte UTF-8 character (an emoji, a CJK ideograph) over several tokens,
and a merge can change how earlier tokens read. So each piece is the difference between decoding a
short window of tokens with and without the newest ones (the prefix/read offsets of vLLM's
incremental detokenizer), and text ending in U+FFFD (an incomplete character) is held back until
the next token completes it. The window starts inside the prompt, so the completion reads as it
does after the prompt (a leading space or ``##`` continuation is decoded in context).
"""

from __future__ import annotations

from llmkit.data.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Turns token ids, pushed one or more at a time, into text pieces that concatenate correctly."""

    def __init__(self, tokenizer: Tokenizer, context: list[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.ids = list(context)
        self.prefix = 0  # start of the decoding window
        self.read = len(self.ids)  # tokens up to here are already in emitted text

    def push(self, ids: list[int]) -> str:
        """The new text that ``ids`` complete; "" while the text ends in an incomplete character."""
        self.ids.extend(ids)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is held back, incomplete characters included (the sequence has ended)."""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]


class CompletionText:
    """The completion of one sequence: incremental text, held back where a stop string may begin.

    ``push`` returns (piece, stopped). Once a stop string appears, the piece ends before it and
    ``stopped`` is True. Text that could be the start of a stop string waits until it cannot.

    ``skip_leading_whitespace``: a stop string never starts inside the completion's leading
    whitespace, so an answer that opens with "\n" is not cut empty by the stop string "\n". That is
    llmkit's own rule for `llmkit eval` (llmkit/evaluate/scoring.py): lm-evaluation-harness cuts the
    raw text at the first stop (its ``postprocess_generated_text``), which is what the default does.
    Off by default: for a plain completion a leading stop string is a stop.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: list[int],
        stop_strings: list[str],
        skip_leading_whitespace: bool = False,
    ) -> None:
        self.decoder = IncrementalDecoder(tokenizer, prompt_ids)
        self.stop_strings = stop_strings
        self.skip_leading_whitespace = skip_leading_whitespace
        self.text = ""  # decoded so far
        self.sent = 0  # characters of self.text already returned

    def push(self, ids: list[int]) -> tuple[str, bool]:
        self.text += self.decoder.push(ids)
        # a stop string cannot start before self.sent: text that might begin one is never sent
        start = self._search_start()
        hits = [i for s in self.stop_strings if (i := self.text.find(s, start)) >= 0]
        if hits:
            return self._take(min(hits)), True
        return self._take(len(self.text) - self._held_back(start)), False

    def flush(self) -> str:
        """The rest of the text at the end of the sequence (held-back text included)."""
        self.text += self.decoder.flush()
        start = self._search_start()
        hits = [i for s in self.stop_strings if (i := self.text.find(s, start)) >= 0]
        return self._take(min(hits) if hits else len(self.text))

    def _search_start(self) -> int:
        """Where a stop string may start: after the text already sent, and after leading whitespace when
        it is skipped (all-whitespace text so far: its end, so none of it is held back)."""
        if not self.skip_leading_whitespace:
            return self.sent
        return max(self.sent, len(self.text) - len(self.text.lstrip()))

    def _held_back(self, start: int) -> int:
        """Length of the longest end of the text (after ``start``) that is a proper start of a stop string."""
        longest = 0
        for stop in self.stop_strings:
            for n in range(min(len(stop) - 1, len(self.text) - start), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def _take(self, end: int) -> str:
        piece, self.sent = self.text[self.sent : end], max(self.sent, end)
        return piece
