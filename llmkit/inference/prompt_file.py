"""The prompts of one `llmkit generate` call: a single prompt, or a JSONL file of them."""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.errors import LlmkitError


def choose_prompts(prompt: str | None, file: Path | None) -> list[str]:
    """``[prompt]``, or the prompts of ``file`` (exactly one of the two is given)."""
    if (prompt is None) == (file is None):
        raise LlmkitError("give a PROMPT or --file, not both or neither", 'e.g. llmkit generate MODEL "Once upon a"')
    return [prompt] if file is None else read_prompt_file(file)


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per non-blank line: a JSON string or an object with a ``"prompt"`` string."""
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", "pass a JSONL file of prompts")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise LlmkitError(f"{path}:{n}: not valid JSON ({err.msg})", 'write "text" or {"prompt": "text"}') from None
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str):
            raise LlmkitError(f"{path}:{n}: no prompt string", 'write "text" or {"prompt": "text"}')
        prompts.append(prompt)
    if not prompts:
        raise LlmkitError(f"{path}: no prompts", "write one prompt per line")
    return prompts
