"""The prompts of one `llmkit generate` call: a single prompt, a JSONL file of them, or a conversation file.

A prompt is a plain string or a conversation (a list of ``{"role", "content"}`` messages, OpenAI's shape);
`llmkit generate` renders both with the checkpoint's chat template where it has one (llmkit.chat.template).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.files import read_jsonl

ROLES = ("system", "user", "assistant", "tool")
Conversation = list[dict[str, str]]
PromptItem = str | Conversation
RECORD_HINT = 'write "text", {"prompt": "text"} or {"messages": [{"role": "user", "content": "text"}]}'
MESSAGES_HINT = 'write a JSON list of messages, e.g. [{"role": "user", "content": "Hello"}]'


def choose_prompts(prompt: str | None, file: Path | None, messages: Path | None = None) -> list[PromptItem]:
    """``[prompt]``, the prompts of ``file``, or the one conversation of ``messages`` (exactly one is given)."""
    if sum(x is not None for x in (prompt, file, messages)) != 1:
        raise LlmkitError(
            "give one of PROMPT, --file or --messages", 'e.g. llmkit generate MODEL "Translate to French: Good morning"'
        )
    if messages is not None:
        return [read_messages(messages)]
    return [prompt] if file is None else read_prompt_file(file)


def read_prompt_file(path: Path) -> list[PromptItem]:
    """One prompt per non-blank line: a JSON string, an object with a ``"prompt"`` string, or an object with a
    ``"messages"`` list (a conversation)."""
    prompts: list[PromptItem] = []
    for n, item in read_jsonl(path, RECORD_HINT, objects=False, missing_hint="pass a JSONL file of prompts"):
        if isinstance(item, dict) and "messages" in item:
            prompts.append(check_messages(item["messages"], f"{path}:{n}"))
            continue
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str):
            raise LlmkitError(f"{path}:{n}: no prompt string", RECORD_HINT)
        prompts.append(prompt)
    if not prompts:
        raise LlmkitError(f"{path}: no prompts", "write one prompt per line")
    return prompts


def read_messages(path: Path) -> Conversation:
    """A conversation file: a JSON list of ``{"role", "content"}`` messages (a one-line error otherwise)."""
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", MESSAGES_HINT)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LlmkitError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})", MESSAGES_HINT) from None
    except UnicodeDecodeError:
        raise LlmkitError(f"{path}: not UTF-8 text", MESSAGES_HINT) from None
    if isinstance(data, dict) and "messages" in data:  # a transcript `llmkit chat`'s /save wrote
        data = data["messages"]
    return check_messages(data, str(path))


def check_messages(data: Any, where: str) -> Conversation:
    """``data`` as a conversation: a non-empty list of messages, each a role from ROLES and a string content."""
    if not isinstance(data, list) or not data:
        raise LlmkitError(f"{where}: messages must be a non-empty JSON list", MESSAGES_HINT)
    for i, message in enumerate(data):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise LlmkitError(f"{where}: message {i} needs a string 'content'", MESSAGES_HINT)
        if message.get("role") not in ROLES:
            role = message.get("role")
            raise LlmkitError(f"{where}: message {i} has role {role!r}", f"use one of {', '.join(ROLES)}")
    return [{"role": m["role"], "content": m["content"]} for m in data]
