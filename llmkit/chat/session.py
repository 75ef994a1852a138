"""A multi-turn chat as data and pure steps: the turns, the system prompt, the generation settings, the
slash commands, fitting the conversation to the context window, and the transcript file.

No model and no terminal here: the prompt is built with the chat template and a ``count_tokens``
callable, and ``llmkit.chat.terminal`` does the reading, streaming and printing.

Fitting (``fit``): the prompt is the system message, then the turns, then the generation prompt; while it
and ``max_new_tokens`` do not fit the window, the oldest turn (a user message and the reply to it) is
dropped for good and the user is told how many were dropped. A lone message too long for the window is
refused with the numbers.

With an index (``retrieve``, ``llmkit chat --index``), each message is also a query: the sources it
retrieves go into that turn's user message as ``llmkit ask`` writes them (numbered, with their citations;
the lowest-ranked dropped until the prompt fits), and the outcome carries them so the reply's citations can
be named. The conversation keeps the plain message, so earlier turns' sources do not crowd the window.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmkit.chat.template import ChatTemplate
from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError
from llmkit.files import atomic_write
from llmkit.retrieval.ask import build_rag_prompt
from llmkit.retrieval.store import Hit

# settings that only matter when sampling: setting one turns sampling on, as `llmkit generate`'s flags do
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p")
HELP = """commands:
  /reset               forget the conversation (the system prompt stays)
  /system TEXT         set the system prompt (/system alone removes it)
  /set FIELD VALUE     change a generation setting, e.g. /set temperature 0.7 (/set alone lists them)
  /save FILE           write the conversation as JSON
  /help                this list
  /quit                leave (or Ctrl-D); Ctrl-C stops a reply"""


@dataclass
class ChatSession:
    """The conversation so far (user and assistant messages), the system prompt and the settings."""

    template: ChatTemplate
    config: GenerationConfig
    window: int  # the model's context window, in tokens
    count_tokens: Callable[[str], int]
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    dropped: int = 0  # turns dropped so far to fit the window
    retrieve: Callable[[str], list[Hit]] | None = None  # a message -> its sources, best first (--index)

    def messages(self, turns: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + (self.turns if turns is None else turns)

    def generation_config(self) -> GenerationConfig:
        """The settings for the next reply: the user's, plus the template's stop strings."""
        stops = [s for s in self.template.stop if s not in self.config.stop_strings]
        return self.config.replace(stop_strings=[*self.config.stop_strings, *stops]) if stops else self.config


@dataclass
class Outcome:
    """What a line did: ``text`` to show the user, ``quit`` to leave, ``prompt`` to generate a reply from."""

    text: str = ""
    quit: bool = False
    prompt: str | None = None
    sources: list[Hit] = field(default_factory=list)  # what the prompt shows, numbered from 1 (--index)


def handle(session: ChatSession, line: str) -> Outcome:
    """One line from the user: a slash command, or a message (then the prompt to answer it, fitted)."""
    stripped = line.strip()
    if not stripped:
        return Outcome()
    if stripped.startswith("/") and not stripped.startswith("//"):
        try:
            return command(session, stripped)
        except LlmkitError as err:  # a command's mistake is a line in the chat, not the end of it
            return Outcome(f"error: {err}")
    text = stripped[1:] if stripped.startswith("//") else line.rstrip("\n")  # "//x" sends "/x"
    session.turns.append({"role": "user", "content": text})
    try:
        prompt, dropped = fit(session)
        sources, left_out = [], 0
        if session.retrieve is not None:
            prompt, sources, left_out = with_sources(session, text)
    except LlmkitError as err:
        session.turns.pop()
        return Outcome(f"error: {err}")
    notes = []
    if dropped:
        notes.append(f"(context window: dropped the {_count(dropped, 'oldest turn')} to fit {session.window} tokens)")
    if left_out:
        notes.append(f"(context window: {left_out} of {left_out + len(sources)} sources left out)")
    return Outcome("\n".join(notes), prompt=prompt, sources=sources)


def with_sources(session: ChatSession, question: str) -> tuple[str, list[Hit], int]:
    """The prompt whose last user message carries ``question``'s retrieved sources (as many as fit), the
    sources shown, and how many were left out."""
    earlier = session.turns[:-1]

    def render(message: str) -> str:
        return session.template.render(session.messages([*earlier, {"role": "user", "content": message}]))

    hits = session.retrieve(question)
    rag = build_rag_prompt(question, hits, render, session.count_tokens, session.window, session.config.max_new_tokens)
    return rag.text, rag.sources, rag.dropped


def add_reply(session: ChatSession, text: str) -> None:
    """The assistant's reply (whole, or as far as it got before Ctrl-C) joins the conversation."""
    session.turns.append({"role": "assistant", "content": text})


def fit(session: ChatSession) -> tuple[str, int]:
    """The prompt for the conversation, dropping the oldest turns until it and max_new_tokens fit the window.

    Returns (prompt, turns dropped now). The dropped turns leave ``session.turns``."""
    room = session.window - session.config.max_new_tokens
    dropped = 0
    while True:
        prompt = session.template.render(session.messages())
        used = session.count_tokens(prompt)
        if used <= room:
            session.dropped += dropped
            return prompt, dropped
        if len(session.turns) <= 1:
            raise LlmkitError(
                f"the message needs {used} tokens with the system prompt, and the context window of "
                f"{session.window} keeps {max(room, 0)} after max_new_tokens={session.config.max_new_tokens}",
                "send a shorter message, shorten /system, or /set max_new_tokens lower",
            )
        # a turn is a user message and its reply: drop both, so the conversation still starts with the user
        cut = 2 if len(session.turns) > 2 and session.turns[1]["role"] == "assistant" else 1
        del session.turns[:cut]
        dropped += 1


def command(session: ChatSession, line: str) -> Outcome:
    """A slash command: /reset, /system, /set, /save, /help, /quit."""
    name, _, arg = line[1:].partition(" ")
    arg = arg.strip()
    if name in ("quit", "exit"):
        return Outcome(quit=True)
    if name == "help":
        return Outcome(HELP)
    if name == "reset":
        session.turns.clear()
        return Outcome("(conversation cleared)")
    if name == "system":
        session.system = arg or None
        return Outcome(f"(system prompt set: {arg})" if arg else "(system prompt removed)")
    if name == "set":
        return Outcome(set_field(session, arg))
    if name == "save":
        if not arg:
            return Outcome("error: /save needs a file name, e.g. /save chat.json")
        path = save(session, Path(arg).expanduser())
        return Outcome(f"(saved {len(session.turns)} messages to {path})")
    return Outcome(f"error: unknown command /{name}; /help lists the commands")


def set_field(session: ChatSession, arg: str) -> str:
    """``/set FIELD VALUE``: any GenerationConfig field, the value read as JSON (else as text), validated."""
    if not arg:
        return "\n".join(f"  {f.name} = {json.dumps(getattr(session.config, f.name))}" for f in fields(session.config))
    name, _, raw = arg.partition(" ")
    if not raw.strip():
        return f"error: /set {name} needs a value, e.g. /set temperature 0.7"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.strip()
    changes = {name: value}
    turned_on = name in SAMPLING_FIELDS and not session.config.do_sample
    if turned_on:
        changes["do_sample"] = True
    try:
        session.config = session.config.replace(**changes)
    except LlmkitError as err:
        return f"error: {err}"
    except TypeError as err:  # a value of the wrong type, e.g. a list where a number belongs
        return f"error: {name}={value!r} is not accepted ({err})"
    return f"({name} = {json.dumps(value)}{'; sampling turned on' if turned_on else ''})"


def transcript(session: ChatSession) -> dict[str, Any]:
    """The conversation as JSON: the messages (system first, OpenAI's shape) and the settings."""
    return {"messages": session.messages(), "generation_config": session.config.to_dict(),
            "dropped_turns": session.dropped}  # fmt: skip


def save(session: ChatSession, path: Path) -> Path:
    """Write ``transcript`` to ``path`` atomically (a temporary file renamed into place)."""
    try:
        return atomic_write(path, json.dumps(transcript(session), indent=2, ensure_ascii=False) + "\n")
    except OSError as err:
        raise LlmkitError(f"cannot write {path}: {err.strerror}", "choose a writable path") from None


def _count(n: int, noun: str) -> str:
    return f"{noun}" if n == 1 else f"{n} {noun}s"
