"""`llmkit generate` and `llmkit fill-mask`: thin calls into llmkit.inference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# flag -> GenerationConfig field; flags left unset keep the checkpoint's generation_config.json
_SETTINGS = {
    "max_new_tokens": int,
    "min_new_tokens": int,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "repetition_penalty": float,
    "seed": int,
    "num_beams": int,
    "num_return_sequences": int,
    "length_penalty": float,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a prompt (decoder-only and encoder-decoder models)",
        description="Generate a completion for PROMPT (or for each line of --file) with a checkpoint's own "
        "generation_config.json, changed by the flags given. Per step: repetition penalty -> EOS masked below "
        "--min-new-tokens -> greedy argmax, or with --do-sample temperature -> top-k -> top-p -> min-p -> draw. "
        "A sequence stops at EOS, a --stop string, or --max-new-tokens. --stream prints tokens as they come; "
        "--explain shows, per position, the top candidates with their raw probability, probability after "
        "temperature, which filters kept them, and the token drawn.",
    )
    p.add_argument("model", metavar="MODEL", help="llmkit checkpoint directory")
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt text")
    p.add_argument("--file", type=Path, help='JSONL of prompts: a string or {"prompt": ...} per line (one batch)')
    for name, kind in _SETTINGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, metavar=name.upper())
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--do-sample", dest="do_sample", action="store_true", default=None, help="sample, not greedy")
    p.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy even if the config samples")
    p.add_argument("--early-stopping", choices=["true", "false", "never"], default=None, help="beam search")
    p.add_argument("--truncate", action="store_true", default=None, help="keep a too-long prompt's last tokens")
    p.add_argument(
        "--compile", action="store_true", default=None,
        help="torch.compile the decoding step: faster per token after seconds to a minute of compiling",
    )  # fmt: skip
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated (one sequence)")
    p.add_argument("--explain", action="store_true", help="per position: candidates, probabilities, filters")
    p.add_argument("--top", type=int, default=10, help="candidates per position in --explain (default 10)")
    p.add_argument(
        "--plot", metavar="PNG", type=Path,
        help="with --explain: bar charts of the next-token distribution at --plot-position, one per temperature "
        "(softmax(logits / T) of the model's scores there), with the top-k/top-p/min-p cut marked",
    )  # fmt: skip
    p.add_argument(
        "--plot-position", type=int, default=0, metavar="N",
        help="generated position to plot: 0 = the first new token (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--plot-temperatures", default="0.5,1.0,1.5", metavar="T,T,...",
        help="comma-separated temperatures, one panel each (default 0.5,1.0,1.5)",
    )  # fmt: skip
    p.add_argument(
        "--plot-top", type=int, default=10, metavar="N",
        help="tokens shown per panel; the rest of the vocabulary is one 'other' bar (default 10)",
    )  # fmt: skip
    p.add_argument("--echo", action="store_true", help="print the prompt before its completion")
    p.add_argument("--json", action="store_true", help="print JSON (one object per line, or the explanation)")
    _add_device_flags(p)
    p.set_defaults(handler=run)

    f = sub.add_parser(
        "fill-mask",
        help="the most likely tokens for each [MASK] (encoder-only models)",
        description="Fill each [MASK] in TEXT with an encoder-only model (BERT): one forward pass, softmax at "
        "each mask position, the --top-k tokens with their probabilities and the filled text.",
    )
    f.add_argument("model", metavar="MODEL", help="llmkit checkpoint directory of an encoder with an MLM head")
    f.add_argument("text", metavar="TEXT", help='text with one or more [MASK], e.g. "Paris is the [MASK] of France."')
    f.add_argument("--top-k", type=int, default=5, help="candidates per mask (default 5)")
    f.add_argument("--json", action="store_true", help="print JSON")
    _add_device_flags(f)
    f.set_defaults(handler=run_fill_mask)


def _add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    p.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast the weights (default: as stored)"
    )


def _load(args: argparse.Namespace):
    import torch

    from llmkit import checkpoint

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.dtype]
    return checkpoint.load(args.model, device=device, dtype=dtype)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {name: getattr(args, name) for name in _SETTINGS if getattr(args, name) is not None}
    if args.stop:
        out["stop_strings"] = args.stop
    if args.do_sample is not None:
        out["do_sample"] = args.do_sample
    if args.early_stopping is not None:
        out["early_stopping"] = {"true": True, "false": False}.get(args.early_stopping, args.early_stopping)
    if args.truncate:
        out["truncate"] = True
    if args.compile:
        out["compile"] = True
    return out


def _prompts(args: argparse.Namespace) -> list[str]:
    from llmkit.errors import LlmkitError

    if (args.prompt is None) == (args.file is None):
        raise LlmkitError("give a PROMPT or --file, not both or neither", 'e.g. llmkit generate MODEL "Once upon a"')
    if args.file is None:
        return [args.prompt]
    if not args.file.is_file():
        raise LlmkitError(f"{args.file}: file not found", "pass a JSONL file of prompts")
    prompts = []
    for n, line in enumerate(args.file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise LlmkitError(
                f"{args.file}:{n}: not valid JSON ({err.msg})", 'write "text" or {"prompt": "text"}'
            ) from None
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str):
            raise LlmkitError(f"{args.file}:{n}: no prompt string", 'write "text" or {"prompt": "text"}')
        prompts.append(prompt)
    if not prompts:
        raise LlmkitError(f"{args.file}: no prompts", "write one prompt per line")
    return prompts


def run(args: argparse.Namespace) -> None:
    from llmkit.errors import LlmkitError
    from llmkit.inference import explain, generate, stream

    prompts = _prompts(args)
    temperatures = _plot_temperatures(args)
    model = _load(args)
    overrides = _overrides(args)
    if args.explain:
        if len(prompts) != 1:
            raise LlmkitError("--explain takes one prompt", "drop --file or --explain")
        scores: dict[int, Any] = {}

        def keep_scores(t: int, step_scores, tokens) -> None:  # the whole distribution at the plotted position
            if t == args.plot_position:
                scores[t] = step_scores[0].float().clone()  # (V,)

        result = explain(model, prompts[0], top=args.top, observer=keep_scores if args.plot else None, **overrides)
        print(result.to_json() if args.json else result.table() + f"\n\ncompletion: {result.completion!r}")
        if args.plot:
            _plot_distribution(args, model, result, scores.get(args.plot_position), temperatures)
        return
    if args.stream:
        s = stream(model, prompts, **overrides)
        if len(prompts) * s.config.num_return_sequences != 1 or s.config.num_beams > 1:
            raise LlmkitError("--stream prints one sequence as it grows", "use one prompt, no beams, one sequence")
        if args.echo:
            print(prompts[0], end="", flush=True)
        for piece in s:
            print(piece.text, end="", flush=True)
        print()
        return
    completions = generate(model, prompts, **overrides)
    for c in completions:
        text = (c.prompt or "") + c.text if args.echo else c.text
        if args.json:
            record = {"index": c.index, "prompt_index": c.prompt_index, "prompt": c.prompt, "completion": c.text,
                      "token_ids": c.token_ids, "finish_reason": c.finish_reason}  # fmt: skip
            if args.echo:
                record["text"] = text
            print(json.dumps(record, ensure_ascii=False))
        else:
            if len(completions) > 1:
                print(f"=== prompt {c.prompt_index}, sequence {c.index} ({c.finish_reason}) ===")
            print(text)
    sys.stdout.flush()


def _plot_temperatures(args: argparse.Namespace) -> list[float]:
    """--plot checks, done before the model loads: its temperatures, position and size."""
    from llmkit.errors import LlmkitError

    if args.plot is None:
        return []
    if not args.explain:
        raise LlmkitError("--plot draws the distribution --explain computes", "add --explain")
    if args.plot.suffix.lower() != ".png":
        raise LlmkitError(f"--plot {args.plot}: pictures are written as PNG", "give a file name ending in .png")
    if args.plot_position < 0 or args.plot_top < 1:
        raise LlmkitError("--plot-position must be >= 0 and --plot-top >= 1", "e.g. --plot-position 0 --plot-top 10")
    try:
        temperatures = [float(t) for t in args.plot_temperatures.split(",") if t.strip()]
    except ValueError:
        raise LlmkitError(f"--plot-temperatures {args.plot_temperatures!r} is not a list of numbers",
                          "e.g. --plot-temperatures 0.5,1.0,1.5") from None  # fmt: skip
    if not temperatures or any(t <= 0 for t in temperatures):
        raise LlmkitError("--plot-temperatures needs numbers above 0", "e.g. --plot-temperatures 0.5,1.0,1.5")
    return temperatures


def _plot_distribution(args: argparse.Namespace, model, result, scores, temperatures: list[float]) -> None:
    """Bar charts of softmax(scores / T) at --plot-position, one panel per temperature, written as a PNG."""
    from llmkit.cli._viz import model_name
    from llmkit.errors import LlmkitError
    from llmkit.inference.explain import token_text
    from llmkit.viz.distribution import Filters, draw_distribution, temperature_panels
    from llmkit.viz.style import save_png
    from llmkit.viz.tokens import visible

    position = args.plot_position
    if scores is None:
        raise LlmkitError(
            f"--plot-position {position}: the completion has {len(result.steps)} tokens (positions 0-"
            f"{len(result.steps) - 1})",
            "choose a smaller --plot-position or raise --max-new-tokens",
        )
    settings = result.settings
    filters = Filters(settings["top_k"], settings["top_p"], settings["min_p"])
    panels = temperature_panels(
        scores, temperatures, lambda i: visible(token_text(model.tokenizer, i)), args.plot_top, filters
    )
    # the text the model had read when it scored this position: the prompt and the tokens drawn before it
    before = model.tokenizer.decode([s.drawn_id for s in result.steps[:position]]) if model.tokenizer else ""
    context = ((result.prompt or "") + before).replace("\n", "↵")
    context = context if len(context) <= 40 else "…" + context[-39:]  # its end is what matters here
    title = f"{model_name(args.model)}: next-token probabilities at position {position}, after “{context}”"
    sampling = settings["temperature"] if settings["do_sample"] else None
    path = save_png(draw_distribution(panels, title, filters, sampling), args.plot)
    print(f"wrote {path}: position {position}, temperatures {', '.join(f'{t:g}' for t in temperatures)}")


def run_fill_mask(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from llmkit.inference import fill_mask

    fills = fill_mask(_load(args), args.text, top_k=args.top_k)
    if args.json:
        print(json.dumps([[asdict(c) for c in row] for row in fills], indent=2, ensure_ascii=False))
        return
    for m, row in enumerate(fills):
        if len(fills) > 1:
            print(f"mask {m}:")
        for c in row:
            print(f"  {c.score:8.4f}  {json.dumps(c.token, ensure_ascii=False):<16} {c.sequence}")
