"""Results of `llmkit generate` and `llmkit fill-mask` as the lines a terminal shows, or as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from llmkit.inference.engine import Completion
from llmkit.inference.fill_mask import MaskFill


def completion_record(c: Completion, echo: bool = False) -> dict[str, Any]:
    """One completion as a JSON object; with ``echo`` it adds ``text``, the prompt followed by the completion."""
    record = {"index": c.index, "prompt_index": c.prompt_index, "prompt": c.prompt, "completion": c.text,
              "token_ids": c.token_ids, "finish_reason": c.finish_reason}  # fmt: skip
    if echo:
        record["text"] = (c.prompt or "") + c.text
    return record


def completion_lines(completions: list[Completion], echo: bool = False, as_json: bool = False) -> list[str]:
    """A JSON object per completion, or each text (prompt first with ``echo``) under a header naming its
    prompt, sequence and finish reason when there are several."""
    if as_json:
        return [json.dumps(completion_record(c, echo), ensure_ascii=False) for c in completions]
    lines = []
    for c in completions:
        if len(completions) > 1:
            lines.append(f"=== prompt {c.prompt_index}, sequence {c.index} ({c.finish_reason}) ===")
        lines.append((c.prompt or "") + c.text if echo else c.text)
    return lines


def fill_mask_text(fills: list[list[MaskFill]], as_json: bool = False) -> str:
    """Per mask (numbered when there are several), each candidate's probability, token and filled text."""
    if as_json:
        return json.dumps([[asdict(c) for c in row] for row in fills], indent=2, ensure_ascii=False)
    lines = []
    for m, row in enumerate(fills):
        if len(fills) > 1:
            lines.append(f"mask {m}:")
        for c in row:
            lines.append(f"  {c.score:8.4f}  {json.dumps(c.token, ensure_ascii=False):<16} {c.sequence}")
    return "\n".join(lines)
