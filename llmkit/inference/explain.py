"""Explain mode: at each generated position, the top candidates and what every filter did to them.

For one prompt, per step: raw probability (softmax of the model's scores, after the repetition
penalty and min_new_tokens mask when those are set) -> probability after temperature -> kept by
top-k -> kept by top-p -> kept by min-p (each filter sees the survivors of the previous one, as the
sampler does) -> final probability drawn from -> the drawn token. With greedy decoding the warpers
are off (as in transformers): temperature leaves the probabilities as they are, every filter keeps
every token, and the final distribution puts all mass on the argmax.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError
from llmkit.inference.engine import Observer, Stream, collect
from llmkit.inference.sampling import min_p_keep, top_k_keep, top_p_keep


@dataclass
class Candidate:
    token_id: int
    token: str
    raw_prob: float
    temperature_prob: float
    kept_top_k: bool | None  # None: dropped by an earlier filter
    kept_top_p: bool | None
    kept_min_p: bool | None
    final_prob: float


@dataclass
class StepExplanation:
    position: int  # 0 = first new token
    drawn_id: int
    drawn_token: str
    candidates: list[Candidate]  # the top ones by raw probability, plus the drawn token if not among them


@dataclass
class Explanation:
    prompt: str | None
    completion: str
    settings: dict[str, Any]
    steps: list[StepExplanation]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def table(self) -> str:
        """Text tables, one per position, for a terminal."""
        s = self.settings
        lines = [
            f"sampling={s['do_sample']} temperature={s['temperature']} top_k={s['top_k']} top_p={s['top_p']} "
            f"min_p={s['min_p']}"
        ]
        head = f"  {'':2}{'token':<18}{'id':>7}{'raw':>8}{'temp':>8}{'top-k':>7}{'top-p':>7}{'min-p':>7}{'final':>8}"
        mark = {True: "yes", False: "no", None: "-"}
        for step in self.steps:
            drew = json.dumps(step.drawn_token, ensure_ascii=False)
            lines += ["", f"position {step.position}: drew {drew} (id {step.drawn_id})", head]
            for c in step.candidates:
                lines.append(
                    f"  {'>' if c.token_id == step.drawn_id else ' ':2}{_show(c.token):<18}{c.token_id:>7}"
                    f"{c.raw_prob:>8.4f}{c.temperature_prob:>8.4f}{mark[c.kept_top_k]:>7}{mark[c.kept_top_p]:>7}"
                    f"{mark[c.kept_min_p]:>7}{c.final_prob:>8.4f}"
                )
        return "\n".join(lines)


def explain(
    model: nn.Module,
    prompt: Any,
    config: GenerationConfig | None = None,
    top: int = 10,
    observer: Observer | None = None,
    **overrides: Any,
) -> Explanation:
    """Generate from one prompt and record, per position, the ``top`` candidates through every stage.

    ``observer`` also receives each step's full scores (1, V) and drawn token (1,), for callers that
    need more than the top candidates (``llmkit generate --explain --plot`` draws whole distributions).
    """
    steps: list[StepExplanation] = []
    tokenizer = getattr(model, "tokenizer", None)

    def observe(t: int, scores: torch.Tensor, tokens: torch.Tensor) -> None:
        steps.append(_explain_step(t, scores[0].float(), int(tokens[0]), s.config, top, tokenizer))
        if observer is not None:
            observer(t, scores, tokens)

    s = Stream(model, prompt, config, observer=observe, **overrides)
    if len(s.prompts.ids) != 1 or s.config.num_beams != 1 or s.config.num_return_sequences != 1:
        raise LlmkitError("explain takes one prompt and one sequence without beam search", "explain prompts one by one")
    completion = collect(s, list(s))[0]
    settings = {k: getattr(s.config, k) for k in ("do_sample", "temperature", "top_k", "top_p", "min_p", "seed")}
    return Explanation(s.prompts.texts[0], completion.text, settings, steps)


def _explain_step(t: int, scores: torch.Tensor, drawn: int, cfg: GenerationConfig, top: int, tokenizer):
    """One position: raw -> temperature -> top-k -> top-p -> min-p -> final, for the top candidates."""
    V = scores.shape[-1]
    raw = scores.softmax(-1)
    if cfg.do_sample and cfg.temperature > 0:
        logits = scores / cfg.temperature
        temp = logits.softmax(-1)
        keeps = []
        for keep, value in ((top_k_keep, cfg.top_k), (top_p_keep, cfg.top_p), (min_p_keep, cfg.min_p)):
            kept = keep(logits[None], value)[0]
            keeps.append(kept)
            logits = logits.masked_fill(~kept, float("-inf"))
        final = logits.softmax(-1)
    else:  # greedy (or temperature 0): no warper runs, all mass on the argmax
        temp = raw
        keeps = [torch.ones(V, dtype=torch.bool)] * 3
        final = torch.zeros(V).index_fill_(0, scores.argmax().view(1), 1.0)
    order = torch.topk(raw, min(top, V)).indices.tolist()
    if drawn not in order:
        order.append(drawn)
    cands = []
    for i in order:
        flags, alive = [], True
        for kept in keeps:  # a token dropped by one filter is not judged by the next ones
            flags.append(bool(kept[i]) if alive else None)
            alive = alive and bool(kept[i])
        cands.append(Candidate(i, token_text(tokenizer, i), float(raw[i]), float(temp[i]), *flags, float(final[i])))
    return StepExplanation(t, drawn, token_text(tokenizer, drawn), cands)


def token_text(tokenizer, token_id: int) -> str:
    """The token's text; a byte-level token that is part of a character shows its bytes: <0xE4 0xB8>."""
    if tokenizer is None:
        return f"<{token_id}>"
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if text and "\ufffd" not in text:
        return text
    raw = tokenizer.token_bytes(token_id)
    if raw:
        return "<" + " ".join(f"0x{b:02X}" for b in raw) + ">"
    return tokenizer.id_to_token(token_id) or f"<{token_id}>"


def _show(token: str) -> str:
    shown = json.dumps(token, ensure_ascii=False)
    return shown if len(shown) <= 16 else shown[:15] + "…"
