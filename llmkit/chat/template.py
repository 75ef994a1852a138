"""Chat messages (and tools) -> one prompt: the checkpoint's Jinja chat template, or the plain one.

The one renderer: ``llmkit chat``, ``llmkit generate`` and the server's chat completions (llmkit.serve) use
it, and ``chat_prompts`` is the rule by which `generate` and `eval` turn a plain prompt into a user turn. ``tools``
passed to templates that handle them (``llmkit.tools.render_messages`` rewrites the conversation for the
others), transformers' Jinja globals and filters (``raise_exception``, ``strftime_now``, a ``tojson`` that
keeps non-ASCII and does not HTML-escape), and ``add_generation_prompt`` as a choice. Without a template
the plain one writes "System:/User:/Assistant:" lines and "\\nUser:" stops the reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.tools import render_messages

PLAIN_STOP = ["\nUser:"]
_PROBE = "llmkit-end-of-turn-probe"  # an assistant reply whose end shows where the template closes the turn


@dataclass
class ChatTemplate:
    source: str | None = None  # the Jinja text, or None for the plain template
    special: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token for the template

    @classmethod
    def from_dir(cls, directory: str | Path | None, special: dict[str, str] | None = None) -> ChatTemplate:
        """The template of a checkpoint directory: its chat_template.jinja (transformers prefers it), else
        the ``chat_template`` of its tokenizer_config.json, if either exists."""
        jinja = Path(directory) / "chat_template.jinja" if directory is not None else None
        if jinja is not None and jinja.is_file():
            return cls(jinja.read_text(encoding="utf-8"), special or {})
        path = Path(directory) / "tokenizer_config.json" if directory is not None else None
        if path is None or not path.is_file():
            return cls(None, special or {})
        try:
            source = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, json.JSONDecodeError) as err:
            raise LlmkitError(f"{path}: cannot read ({err})", "fix or remove tokenizer_config.json") from None
        if isinstance(source, list):  # newer files list named templates; "default" is the chat one
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        return cls(source if isinstance(source, str) else None, special or {})

    @classmethod
    def for_model(cls, directory: str | Path | None, tokenizer) -> ChatTemplate:
        """``from_dir`` with the tokenizer's bos/eos strings, the names templates use for them."""
        roles = tokenizer.special_tokens if tokenizer is not None else {}
        return cls.from_dir(directory, {f"{r}_token": roles[r] for r in ("bos", "eos") if r in roles})

    @property
    def stop(self) -> list[str]:
        """Stop strings the template implies (the plain one's next user turn)."""
        return [] if self.source else list(PLAIN_STOP)

    def end_of_turn(self, tokenizer) -> int | None:
        """The special token the template writes right after an assistant's reply (SmolLM2's and Qwen's
        ``<|im_end|>``, Llama 3's ``<|eot_id|>``, Gemma's ``<end_of_turn>``): a reply ends there, whether or not
        the checkpoint's eos_token_id names it. None for the plain template or when no special token follows."""
        if self.source is None or tokenizer is None:
            return None
        turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
        try:
            text = self.render(turn, add_generation_prompt=False)
        except LlmkitError:  # a template that refuses this shape: no marker to learn
            return None
        at = text.find(_PROBE)
        tail = text[at + len(_PROBE) :].lstrip(" ") if at >= 0 else ""
        added = tokenizer.backend.get_added_tokens_decoder()  # id -> AddedToken: the specials never split
        found = [(len(t.content), i) for i, t in added.items() if t.special and tail.startswith(t.content or "\0")]
        return max(found)[1] if found else None

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt for ``messages`` (OpenAI's shape, tool calls and results included) and ``tools``."""
        messages, tools = render_messages(messages, tools or [], self.source)
        if self.source is None:
            lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
            return "\n".join(lines) + ("\nAssistant:" if add_generation_prompt else "")
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        extra = {"tools": tools} if tools else {}
        try:
            return env.from_string(self.source).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **extra, **self.special
            )
        except TemplateError as err:
            raise LlmkitError(
                f"the model's chat template failed: {err}", "check the messages' roles and order"
            ) from None


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
    # transformers' tojson: plain json.dumps (Jinja's own escapes <, >, & and ' for HTML)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def _raise(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


def chat_prompts(template: ChatTemplate, items: list[Any], system: str | None = None) -> list[str]:
    """Each prompt as the template renders it for the assistant's next turn: a plain string becomes a user
    message, a conversation is taken whole; ``system`` opens each one that has no system message of its own
    (without it, the template's own default applies: SmolLM2's inserts its system line, as transformers'
    ``apply_chat_template`` does)."""
    out = []
    for item in items:
        messages = [{"role": "user", "content": item}] if isinstance(item, str) else list(item)
        if system is not None:
            if messages[0]["role"] == "system":
                raise LlmkitError("--system given, but the conversation has its own system message",
                                  "drop --system or the conversation's system message")  # fmt: skip
            messages.insert(0, {"role": "system", "content": system})
        out.append(template.render(messages))
    return out


def turn_settings(template: ChatTemplate, tokenizer, eos: list[int], stops: list[str]) -> dict[str, Any]:
    """GenerationConfig changes that end a reply where the template ends the assistant's turn: its end-of-turn
    token joins ``eos`` (the config's eos_token_id), the plain template's "\\nUser:" joins ``stops``."""
    out: dict[str, Any] = {}
    end = template.end_of_turn(tokenizer)
    if end is not None and end not in eos:
        out["eos_token_id"] = [*eos, end]
    extra = [s for s in template.stop if s not in stops]
    if extra:
        out["stop_strings"] = [*stops, *extra]
    return out
