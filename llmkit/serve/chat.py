"""Chat messages -> one prompt: the checkpoint's chat template when it has one, a plain one otherwise.

Hugging Face checkpoints keep a Jinja ``chat_template`` in tokenizer_config.json; it is rendered as
transformers renders it (a sandboxed Jinja environment, ``messages``, ``add_generation_prompt``,
the special tokens). Without one, the plain template writes "System:/User:/Assistant:" lines and
ends with "Assistant:", and "\\nUser:" stops the reply (a base model would go on to write the next
user turn itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError

PLAIN_STOP = ["\nUser:"]


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

    @property
    def stop(self) -> list[str]:
        """Stop strings the template implies (the plain one's next user turn)."""
        return [] if self.source else list(PLAIN_STOP)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt for ``messages``, opening the assistant's turn unless ``add_generation_prompt`` is False."""
        if self.source is None:
            lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
            return "\n".join(lines) + ("\nAssistant:" if add_generation_prompt else "")
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            return env.from_string(self.source).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **self.special
            )
        except TemplateError as err:
            raise LlmkitError(f"the model's chat template failed: {err}", "use /v1/completions") from None
