"""Results of `llmkit generate` and `llmkit fill-mask` as the lines a terminal shows, or as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from llmkit.inference.engine import Completion, Timings
from llmkit.inference.fill_mask import MaskFill


def completion_record(c: Completion, echo: bool = False) -> dict[str, Any]:
    """One completion as a JSON object; with ``echo`` it adds ``text``, the prompt followed by the completion."""
    record = {"index": c.index, "prompt_index": c.prompt_index, "prompt": c.prompt, "completion": c.text,
              "token_ids": c.token_ids, "finish_reason": c.finish_reason}  # fmt: skip
    if echo:
        record["text"] = (c.prompt or "") + c.text
    return record


# why a sequence ended, as the header under which it is printed says it
FINISHED = {
    "eos": "ended with the end-of-text token",
    "stop": "stopped at a stop string or a complete grammar",
    "length": "stopped at the length limit",
}


def completion_lines(completions: list[Completion], echo: bool = False, as_json: bool = False) -> list[str]:
    """A JSON object per completion, or each text (prompt first with ``echo``) under a header when there are
    several: ``--- prompt 3 of 3, stopped at the length limit ---`` (``sequence 2 of 2`` too with several a
    prompt), counted from 1 as people count."""
    if as_json:
        return [json.dumps(completion_record(c, echo), ensure_ascii=False) for c in completions]
    prompts = 1 + max(c.prompt_index for c in completions) if completions else 0
    per_prompt = len(completions) // prompts if prompts else 0
    lines = []
    for c in completions:
        if len(completions) > 1:
            where = [f"prompt {c.prompt_index + 1} of {prompts}"] if prompts > 1 else []
            if per_prompt > 1:
                where.append(f"sequence {c.index % per_prompt + 1} of {per_prompt}")
            where.append(FINISHED.get(c.finish_reason, c.finish_reason))
            lines.append(f"--- {', '.join(where)} ---")
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


def stats_lines(t: Timings, beams: bool = False) -> list[str]:
    """The engine's timings as llama.cpp's timing lines put them: the prompt's tokens and the time to the first
    token (prefill and one choice), then the tokens after it and their rate; beam search only has a total."""
    if t.start is None or t.end is None:  # nothing was generated (max_new_tokens=0)
        return ["stats: no tokens generated"]
    ttft = t.time_to_first_token or 0.0
    first = f"stats: prompt {t.prompt_tokens} tokens, time to first token {ttft * 1000:.1f} ms"
    if beams:
        return [f"{first} (beam search: every token at the end)", f"stats: {t.generated} tokens in {ttft:.2f} s"]
    first += f" ({t.prompt_tokens / ttft:.1f} prompt tokens/s)" if ttft > 0 else ""
    decode = t.decode_seconds or 0.0
    rate = f"{t.decode_tokens / decode:.1f} tokens/s" if decode > 0 and t.decode_tokens else "no tokens after the first"
    total = t.end - t.start
    return [
        first,
        f"stats: {t.generated} tokens generated in {total:.2f} s: {t.first_tokens} at the first step, "
        f"{t.decode_tokens} in {decode:.2f} s after it ({rate})",
    ]
