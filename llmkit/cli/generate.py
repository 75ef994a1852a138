"""`llmkit generate` and `llmkit fill-mask`: thin calls into llmkit.inference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llmkit.config import GenerationConfig

# flag -> (GenerationConfig field type, help); flags left unset keep the checkpoint's generation_config.json
_SETTINGS = {
    "max_new_tokens": (int, "most tokens to generate per sequence"),
    "min_new_tokens": (int, "EOS is masked until this many tokens are generated"),
    "temperature": (float, "divide the scores by T before sampling; implies --do-sample (0 = greedy)"),
    "top_k": (int, "sample among the K most likely tokens; implies --do-sample (0 = off)"),
    "top_p": (float, "sample among the fewest tokens whose probabilities sum to P; implies --do-sample (1 = off)"),
    "min_p": (float, "drop tokens less likely than P x the top token's probability; implies --do-sample (0 = off)"),
    "repetition_penalty": (float, "> 1 discourages tokens already in the sequence, as transformers (1 = off)"),
    "seed": (int, "seed for sampling, for repeatable draws (unset: torch's global generator)"),
    "num_beams": (int, "beam search with N beams (1 = greedy or sampling)"),
    "num_return_sequences": (int, "sequences per prompt (greedy needs beams or --do-sample to differ)"),
    "length_penalty": (float, "beam search: scores are sum(log p) / length**L"),
}
# these only matter when sampling: giving one turns sampling on (transformers would warn and ignore it)
_SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a prompt (decoder-only and encoder-decoder models)",
        description="Generate a completion for PROMPT (or for each line of --file) with a checkpoint's own "
        "generation_config.json, changed by the flags given. Per step: repetition penalty -> EOS masked below "
        "--min-new-tokens -> with --json-schema/--regex/--grammar, tokens the grammar forbids masked (llguidance) "
        "-> greedy argmax, or with --do-sample temperature -> top-k -> top-p -> min-p -> draw. "
        "A sequence stops at EOS, a --stop string, --max-new-tokens, or when its grammar is complete. "
        "--stream prints tokens as they come; "
        "--explain shows, per position, the top candidates with their raw probability, probability after "
        "temperature, which filters kept them, and the token drawn. "
        "On a checkpoint with a chat template (an instruct model), PROMPT is the user's message: it is rendered "
        "as a user turn with the assistant's turn opened, as `llmkit chat`, `ollama run` and litgpt's generate do, "
        "and the reply stops at the template's end-of-turn token; --raw continues PROMPT as bare text instead. "
        "The CLI decodes greedily by default, as transformers does: the model's most likely continuation, the "
        "same on every run; --temperature/--top-k/--top-p/--min-p turn sampling on. The server (llmkit serve) "
        "samples by default (temperature 1), as OpenAI's API does, because its clients expect varied replies.",
    )
    p.add_argument("model", metavar="MODEL", help="llmkit checkpoint directory")
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt text")
    p.add_argument(
        "--file", type=Path,
        help='JSONL of prompts, one batch: a string, {"prompt": ...} or {"messages": [...]} (a conversation) per line',
    )  # fmt: skip
    p.add_argument(
        "--messages", type=Path, metavar="FILE.json",
        help='a whole conversation to answer: a JSON list of {"role": ..., "content": ...} (OpenAI\'s shape), '
        "rendered with the chat template (the plain System:/User:/Assistant: lines on a checkpoint without one)",
    )  # fmt: skip
    p.add_argument(
        "--system", default=None, metavar="TEXT",
        help="system message before the prompt (default: none, so the template's own default applies, e.g. "
        "SmolLM2's); on a checkpoint without a chat template it asks for the plain chat rendering",
    )  # fmt: skip
    p.add_argument(
        "--raw", action="store_true",
        help="bare completion: continue PROMPT as it is, without the chat template (the default on a checkpoint "
        "that has no template)",
    )  # fmt: skip
    for name, (kind, text) in _SETTINGS.items():
        fallback = getattr(GenerationConfig(), name)
        text += f" (default: the checkpoint's generation_config.json, else {fallback})"
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, metavar=name.upper(),
                       help=text)  # fmt: skip
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--do-sample", dest="do_sample", action="store_true", default=None, help="sample, not greedy")
    p.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy even if the config samples")
    p.add_argument("--early-stopping", choices=["true", "false", "never"], default=None, help="beam search")
    p.add_argument(
        "--truncate",
        action="store_true",
        default=None,
        help="when prompt + --max-new-tokens exceed the context window, keep the prompt's last tokens "
        "(default: an error with the numbers)",
    )
    p.add_argument(
        "--compile", action="store_true", default=None,
        help="torch.compile the decoding step: faster per token after seconds to a minute of compiling",
    )  # fmt: skip
    p.add_argument(
        "--json-schema", metavar="FILE|JSON", default=None,
        help="constrain the output to JSON valid against this schema (a file, or the schema's JSON text); "
        "the output parses unless --max-new-tokens cuts it short",
    )  # fmt: skip
    p.add_argument("--regex", metavar="RE", default=None, help="constrain the output to match this regular expression")
    p.add_argument(
        "--grammar", metavar="FILE", type=Path, default=None,
        help="constrain the output to a Lark grammar (llguidance's dialect) read from FILE",
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
    p.add_argument(
        "--stats", action=argparse.BooleanOptionalAction, default=None,
        help="print the prompt's tokens, the time to first token and tokens/s on stderr, from the engine's own "
        "clock (default: on when stderr is a terminal, as llama.cpp's timing lines)",
    )  # fmt: skip
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


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {name: getattr(args, name) for name in _SETTINGS if getattr(args, name) is not None}
    if args.stop:
        out["stop_strings"] = args.stop
    if args.do_sample is not None:
        out["do_sample"] = args.do_sample
    if args.do_sample is None and _sampling_flags(args):
        out["do_sample"] = True
    if args.early_stopping is not None:
        out["early_stopping"] = {"true": True, "false": False}.get(args.early_stopping, args.early_stopping)
    if args.truncate:
        out["truncate"] = True
    if args.compile:
        out["compile"] = True
    return out


def _constraint(args: argparse.Namespace) -> dict[str, Any]:
    """--json-schema / --regex / --grammar as the keyword of llmkit.generate (read, not yet compiled)."""
    from llmkit.errors import LlmkitError

    out: dict[str, Any] = {}
    if args.json_schema is not None:
        text = args.json_schema.strip()
        # JSON text starts with { (or is true/false); anything else names a file
        if text.startswith("{") or text in ("true", "false"):
            out["json_schema"] = text
        else:
            from llmkit.files import read_json

            out["json_schema"] = read_json(args.json_schema, "pass a JSON schema file or the schema as JSON text")
    if args.regex is not None:
        out["regex"] = args.regex
    if args.grammar is not None:
        if not args.grammar.is_file():
            raise LlmkitError(f"{args.grammar}: file not found", "pass a Lark grammar file to --grammar")
        out["grammar"] = args.grammar.read_text(encoding="utf-8")
    if len(out) > 1:
        raise LlmkitError("--json-schema, --regex and --grammar are alternatives", "give one of them")
    return out


def _sampling_flags(args: argparse.Namespace) -> str:
    return " ".join(f"--{n.replace('_', '-')}" for n in _SAMPLING_FLAGS if getattr(args, n) is not None)


def _sampling_note(args: argparse.Namespace) -> str | None:
    """One line when sampling flags decide (or cannot decide) whether to sample; printed once they are valid."""
    given = _sampling_flags(args)
    if given and args.do_sample is None:
        return f"llmkit generate: {given} turns sampling on (--greedy to decode greedily)"
    if given and args.do_sample is False:
        return f"llmkit generate: {given} ignored: --greedy decodes without sampling"
    return None


def run(args: argparse.Namespace) -> None:
    from llmkit.errors import LlmkitError
    from llmkit.inference import stream
    from llmkit.inference.engine import collect
    from llmkit.inference.loading import load_model, require_lm_head
    from llmkit.inference.prompt_file import choose_prompts
    from llmkit.inference.report import completion_lines, stats_lines

    prompts = choose_prompts(args.prompt, args.file, args.messages)
    plot = _plot_request(args)  # checked before the model loads
    constraint = _constraint(args)  # a missing schema file fails before the model loads
    require_lm_head(args.model, "generate")
    if args.raw and (args.system is not None or any(not isinstance(p, str) for p in prompts)):
        raise LlmkitError("--raw continues plain prompts as bare text", "drop --raw to use --system or conversations")
    model = load_model(args.model, args.device, args.dtype, verify=not args.no_verify)
    overrides = _overrides(args)
    prompts = _chat_prompts(args, model, prompts, overrides)
    note = _sampling_note(args)
    if note:
        from llmkit.inference.engine import resolve_config

        resolve_config(model, None, overrides)  # a bad value is the one line printed, not the note and then it
        print(note, file=sys.stderr)
    if overrides.get("compile"):
        print(_compile_notice(model, len(prompts), overrides), file=sys.stderr, flush=True)
    if args.explain:
        if constraint:
            raise LlmkitError("--explain shows the model's own choices", "drop --json-schema/--regex/--grammar")
        if len(prompts) != 1:
            raise LlmkitError("--explain takes one prompt", "drop --file or --explain")
        _explain(args, model, prompts[0], plot, overrides)
        return
    s = stream(model, prompts, **constraint, **overrides)
    if args.stream:
        if len(prompts) * s.config.num_return_sequences != 1 or s.config.num_beams > 1:
            raise LlmkitError("--stream prints one sequence as it grows", "use one prompt, no beams, one sequence")
        if args.echo:
            print(prompts[0], end="", flush=True)
        for piece in s:
            print(piece.text, end="", flush=True)
        print()
    else:
        for line in completion_lines(collect(s, list(s)), args.echo, args.json):
            print(line)
    sys.stdout.flush()
    if args.stats if args.stats is not None else sys.stderr.isatty():
        print("\n".join(stats_lines(s.timings, beams=s.config.num_beams > 1)), file=sys.stderr)


def _chat_prompts(args: argparse.Namespace, model, prompts: list, overrides: dict[str, Any]) -> list[str]:
    """The prompts as the model is asked them: with the chat template where the checkpoint has one (or where
    --system or a conversation asks for a chat), else bare; a chat's reply ends at the template's end of turn
    (added to ``overrides``)."""
    from llmkit.chat.template import ChatTemplate, chat_prompts, turn_settings
    from llmkit.inference.engine import resolve_config

    tokenizer = getattr(model, "tokenizer", None)
    template = ChatTemplate.for_model(args.model, tokenizer)
    conversations = any(not isinstance(p, str) for p in prompts)
    if args.raw or tokenizer is None or not (template.source or args.system is not None or conversations):
        return prompts
    config = resolve_config(model, None, overrides)
    overrides.update(turn_settings(template, tokenizer, list(config.eos_token_id), list(config.stop_strings)))
    return chat_prompts(template, prompts, args.system)


def _compile_notice(model, n_prompts: int, overrides: dict[str, Any]) -> str:
    """What --compile is doing during its silent first step, and for about how long (llmkit.inference.compiled
    measured seconds for the tiny presets and about a minute for GPT-2 small on a 2-core CPU); or, where the
    steps run in C anyway (llmkit.inference.native: one sequence of a Llama-family model), that nothing compiles."""
    from llmkit.inference.engine import resolve_config
    from llmkit.inference.native import unsupported

    config = resolve_config(model, None, overrides)  # the model's own generation config counts too
    per_prompt = config.num_beams if config.num_beams > 1 else config.num_return_sequences  # as the engine's rows
    if n_prompts * per_prompt == 1 and unsupported(model, 1, False) is None:
        return "llmkit generate: --compile has nothing to do: this model's decoding steps run in C (the native step)"
    params = sum(p.numel() for p in model.parameters())
    usual = "a few seconds for a model this small" if params < 20e6 else "up to a minute or two at this size"
    return (
        f"llmkit generate: compiling the decoding step (torch.compile), usually {usual} on CPU, less on a GPU; "
        "later runs reuse torch's on-disk compile cache and start faster"
    )


def _plot_request(args: argparse.Namespace):
    if args.plot is None:
        return None
    from llmkit.viz.next_token import plot_request

    return plot_request(args.plot, args.plot_position, args.plot_top, args.plot_temperatures, args.explain)


def _explain(args: argparse.Namespace, model, prompt: str, plot, overrides: dict[str, Any]) -> None:
    """The explanation (table or JSON), then with --plot the distribution at --plot-position."""
    from llmkit.viz.next_token import explain_with_scores, plot_next_token

    result, scores = explain_with_scores(model, prompt, args.top, plot.position if plot else None, **overrides)
    print(result.to_json() if args.json else result.table() + f"\n\ncompletion: {result.completion!r}")
    if plot:
        from llmkit.cli._viz import model_name

        print(plot_next_token(model, result, scores, plot, model_name(args.model)))


def run_fill_mask(args: argparse.Namespace) -> None:
    from llmkit.inference import fill_mask
    from llmkit.inference.loading import load_model, require_lm_head
    from llmkit.inference.report import fill_mask_text

    require_lm_head(args.model, "fill-mask")
    model = load_model(args.model, args.device, args.dtype, verify=not args.no_verify)
    fills = fill_mask(model, args.text, top_k=args.top_k)
    print(fill_mask_text(fills, args.json))
