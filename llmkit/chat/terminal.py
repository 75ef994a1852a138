"""The terminal side of `llmkit chat`: read lines, stream replies, and let Ctrl-C stop a reply, not the chat.

Lines come from prompt_toolkit (line editing, history kept in a file, arrow keys through earlier lines)
when stdin and stdout are a terminal, and from plain ``readline`` otherwise (a pipe, a test, a script), so
``printf 'hi\\n/save t.json\\n' | llmkit chat MODEL`` works too; from a pipe no ``you>`` prompt is written, so
stdout carries the replies (and what commands answer) only. Ctrl-C while a reply streams raises
KeyboardInterrupt in the decoding loop: the reply stops there, keeps what it had (it stays in the
conversation) and the next prompt appears. Ctrl-C at the prompt clears the line; Ctrl-D or /quit leaves.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from llmkit.chat.session import ChatSession, add_reply, handle
from llmkit.inference import stream
from llmkit.retrieval.ask import cited

PROMPT = "you> "
STOPPED = "[reply stopped]"
Reader = Callable[[str], str]
Writer = Callable[[str], None]


def line_reader(history: Path | None) -> Reader:
    """prompt_toolkit's prompt with ``history`` (a file; None keeps it in memory) on a terminal, else readline."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        if history is not None:
            history.parent.mkdir(parents=True, exist_ok=True)
        return PromptSession(history=FileHistory(str(history)) if history else InMemoryHistory()).prompt

    typing = sys.stdin.isatty()  # a person at a terminal (stdout redirected) still needs the prompt

    def plain(prompt: str) -> str:
        if typing:
            write(prompt)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line

    return plain


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def reply(model, session: ChatSession, prompt: str, out: Writer) -> tuple[str, bool]:
    """Stream the reply to ``prompt`` to ``out``; (its text, whether Ctrl-C stopped it)."""
    pieces: list[str] = []
    it = iter(stream(model, prompt, session.generation_config()))
    try:
        for piece in it:
            out(piece.text)
            pieces.append(piece.text)
    except KeyboardInterrupt:
        return "".join(pieces), True
    finally:
        it.close()  # a stopped reply's generator lets go of its KV cache now
    return "".join(pieces), False


def run(model, session: ChatSession, read: Reader, out: Writer = write) -> None:
    """The chat loop: read a line, run it (command or message), stream the reply; until /quit or Ctrl-D."""
    while True:
        try:
            line = read(PROMPT)
        except KeyboardInterrupt:  # at the prompt: a fresh line, as shells do
            continue
        except EOFError:
            if sys.stdin.isatty():  # Ctrl-D: end the prompt's line (a pipe's end has no prompt to end)
                out("\n")
            return
        outcome = handle(session, line)
        if outcome.text:
            out(outcome.text + "\n")
        if outcome.quit:
            return
        if outcome.prompt is None:
            continue
        try:
            text, stopped = reply(model, session, outcome.prompt, out)
        except KeyboardInterrupt:  # before the first token (while the prompt was being read)
            text, stopped = "", True
        out(f"\n{STOPPED}\n" if stopped else "\n")
        add_reply(session, text)
        if outcome.sources:
            out(citations(text, outcome.sources))


def citations(answer: str, sources) -> str:
    """The sources the answer cites by number, as ``llmkit ask`` lists them (all shown, when it cites none)."""
    named = cited(answer, sources)
    head = "cited:" if named else "sources (the reply cites none by number):"
    return "\n".join([head, *(f"[{n}] {hit.citation()}" for n, hit in named or enumerate(sources, start=1))]) + "\n"
