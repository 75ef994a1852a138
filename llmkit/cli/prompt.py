"""`llmkit prompt` and `llmkit eval` (one module: they share the task options): thin calls into llmkit.prompts
and llmkit.evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path

_TASK_HELP = (
    "task file (.toml) or the name of one in tasks/ (sst2, rt-polarity, dialogsum, translation-fr-en); see "
    "docs/prompting.md for the format"
)

_PROMPT_DESCRIPTION = """\
Print the k-shot prompt a task builds for one input, and its token count.

The prompt is the task's instruction, then --shots solved examples drawn from the task's example
pool (seeded; random or balanced across labels), then the input with the answer cue left open.
With --model, tokens are counted with that model's tokenizer against its context window, leaving
room for the answer; examples that do not fit are dropped (the summary line says how many), and an
input that does not fit alone is an error with the counts. --index N prints the very prompt
`llmkit eval` builds for item N (the "index" of results.json).
"""

_EVAL_DESCRIPTION = """\
Evaluate MODEL in context on TASK at each shot count: zero-, one- and few-shot.

Classification tasks are scored by label log-likelihood (lm-evaluation-harness's multiple choice:
the label whose continuation has the highest summed log-probability after the prompt; for
encoder-decoder models the label is the decoder's target) or, with --method generate, by greedy
generation parsed into a label; metrics accuracy and macro-F1. Generation tasks generate greedily
and report ROUGE-1/2/L (rouge-score) or BLEU and chrF (sacrebleu). Each shot count uses the same
items and, per item, demonstrations from a generator seeded by the task seed and the item.

Prints a table (shots x metrics, with counts and the prompts that lost demonstrations to the
context window), and writes OUT/results.json (per-item predictions included) and OUT/shots.png
(the metrics against shots). With --perplexity FILE instead of TASK: sliding-window perplexity of
a text file under a decoder-only model.
"""

_EVAL_EPILOG = """\
examples:
  llmkit eval runs/gpt2 sst2 --shots 0,1,5 --limit 200
  llmkit eval runs/flan-t5-base rt-polarity --shots 0,4 --method generate
  llmkit eval runs/gpt2 tasks/dialogsum.toml --shots 0,1 --limit 50 --data ~/dialogsum.test.jsonl
  llmkit eval runs/gpt2 --perplexity notes.txt --stride 512
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prompt",
        help="show the zero/one/few-shot prompt a task builds, with its token count",
        description=_PROMPT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", metavar="TASK", help=_TASK_HELP)
    p.add_argument("--shots", type=int, default=0, help="solved examples before the input (default 0)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="TEXT", help="the input to build the prompt for")
    source.add_argument(
        "--index", type=int, metavar="N",
        help="use the evaluated item numbered N (as in results.json; default: the first)",
    )  # fmt: skip
    p.add_argument("--model", metavar="DIR", help="checkpoint whose tokenizer counts tokens and whose window fits them")
    p.add_argument("--method", choices=["loglikelihood", "generate"], default=None,
                   help="how the answer is read, which sets the room kept for it (default: the task's)")  # fmt: skip
    _add_task_flags(p)
    p.set_defaults(handler=run_prompt)

    e = sub.add_parser(
        "eval",
        help="evaluate a model zero/one/few-shot on a task (accuracy, F1, ROUGE, BLEU, chrF) or perplexity",
        description=_EVAL_DESCRIPTION,
        epilog=_EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("model", metavar="MODEL", help="llmkit checkpoint directory (decoder-only or encoder-decoder)")
    e.add_argument("task", metavar="TASK", nargs="?", help=_TASK_HELP)
    e.add_argument("--shots", default="0,1,5", metavar="K,K,...", help="shot counts, comma-separated (default 0,1,5)")
    e.add_argument("--limit", type=int, metavar="N", help="evaluate a seeded random sample of N items (default all)")
    e.add_argument("--method", choices=["loglikelihood", "generate"], default=None,
                   help="classification: score each label, or generate and parse (default: the task's)")  # fmt: skip
    e.add_argument("--batch-size", type=int, default=8, metavar="N", help="sequences per forward pass (default 8)")
    e.add_argument("--out", type=Path, metavar="DIR",
                   help="where results.json and shots.png go (default runs/eval/TASK-MODELNAME)")  # fmt: skip
    e.add_argument(
        "--perplexity", type=Path, metavar="FILE", help="perplexity of this UTF-8 text file instead of a task"
    )
    e.add_argument("--stride", type=int, metavar="N",
                   help="--perplexity: tokens each window moves (default half the context window)")  # fmt: skip
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    e.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast the weights (default: as stored)"
    )
    _add_task_flags(e)
    e.set_defaults(handler=run_eval)


def _add_task_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="PATH", help="the items to evaluate, instead of the task file's [data] path")
    p.add_argument("--examples", metavar="PATH", help="the demonstration pool, instead of the task's [examples] path")
    p.add_argument("--selection", choices=["random", "balanced"], default=None,
                   help="how demonstrations are picked (default: the task's)")  # fmt: skip
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the demonstration draws and --limit (default: the task's)"
    )


def _task(args: argparse.Namespace):
    from dataclasses import replace

    from llmkit.evaluate.tasks import load_task

    task = load_task(args.task, data=args.data, examples=args.examples)
    changes = {k: v for k, v in (("selection", args.selection), ("seed", args.seed)) if v is not None}
    return replace(task, **changes)


def run_prompt(args: argparse.Namespace) -> None:
    from llmkit.errors import LlmkitError
    from llmkit.evaluate.readers import load_data
    from llmkit.evaluate.tasks import answer_reserve, item_prompt
    from llmkit.prompts import continuation

    if args.shots < 0:
        raise LlmkitError(f"--shots {args.shots} must be >= 0", "use 0 for zero-shot")
    task = _task(args)
    data = load_data(task)
    item = None
    if args.input is None:
        by_index = {item.index: item for item in data.items}
        index = data.items[0].index if args.index is None else args.index
        if index not in by_index:
            raise LlmkitError(
                f"--index {index} is not an evaluated item (a demonstration, or past the end)",
                "take an index from results.json",
            )
        item = by_index[index]
    text = args.input if item is None else item.input
    tokenizer, window, reserve = None, None, 0
    if args.model:
        from llmkit import checkpoint

        cfg = checkpoint.load_config(args.model)
        tokenizer = checkpoint.load_tokenizer(Path(args.model), cfg)
        if tokenizer is None:
            raise LlmkitError(f"{args.model} has no tokenizer.json", "count tokens with a checkpoint that has one")
        window = cfg.max_seq_len
        method = "generate" if task.kind == "generation" else (args.method or task.method)
        reserve = answer_reserve(cfg, tokenizer, task, method)
    prompt = item_prompt(task, data.pool, item.index if item else 0, text, args.shots, tokenizer, window, reserve)
    print(prompt.text)
    print("-" * 40)
    if args.model:
        print(prompt.summary())
    else:
        print(f"{len(prompt.examples)}-shot prompt, {len(prompt.text)} characters (tokens need --model)")
    if task.kind == "classification":
        print("scored continuations: " + " | ".join(repr(continuation(task.prompt, w)) for w in task.label_words))
    if item is not None and item.label is not None:
        print(f"answer: {continuation(task.prompt, task.labels[item.label])!r} (label {item.label})")
    elif item is not None:
        print(
            f"reference: {item.references[0]!r}"
            + (f" (+{len(item.references) - 1} more)" if len(item.references) > 1 else "")
        )


def run_eval(args: argparse.Namespace) -> None:
    import torch

    from llmkit import checkpoint
    from llmkit.cli._options import require_positive
    from llmkit.errors import LlmkitError

    if (args.task is None) == (args.perplexity is None):
        raise LlmkitError("give a TASK or --perplexity FILE, not both or neither", "e.g. llmkit eval MODEL sst2")
    require_positive("--batch-size", args.batch_size)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.dtype]
    if args.perplexity is not None:
        model = checkpoint.load(args.model, device=device, dtype=dtype)
        _perplexity(model, args)
        return
    shots = _shots(args.shots)
    task = _task(args)
    from llmkit.evaluate.evaluator import evaluate_task
    from llmkit.evaluate.readers import load_data
    from llmkit.evaluate.report import plot, table, write_json

    data = load_data(task, limit=require_positive("--limit", args.limit) if args.limit is not None else None)
    model = checkpoint.load(args.model, device=device, dtype=dtype)
    name = Path(args.model).resolve().name
    report = evaluate_task(model, task, data, shots, args.method, args.batch_size, not args.no_progress, name)
    out = args.out or Path("runs") / "eval" / f"{task.name}-{name}"
    out.mkdir(parents=True, exist_ok=True)
    print(table(report))
    print(f"wrote {write_json(report, out / 'results.json')} and {plot(report, out / 'shots.png')}")


def _shots(text: str) -> list[int]:
    from llmkit.errors import LlmkitError

    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise LlmkitError(f"--shots {text!r} is not a comma-separated list of integers", "e.g. --shots 0,1,5") from None
    if not shots or min(shots) < 0 or len(set(shots)) != len(shots):
        raise LlmkitError(f"--shots {text!r} needs distinct counts >= 0", "e.g. --shots 0,1,5")
    return shots


def _perplexity(model, args: argparse.Namespace) -> None:
    from llmkit.errors import LlmkitError
    from llmkit.evaluate.perplexity import perplexity

    if not args.perplexity.is_file():
        raise LlmkitError(f"{args.perplexity}: file not found", "pass a UTF-8 text file")
    if model.tokenizer is None:
        raise LlmkitError(f"{args.model} has no tokenizer", "save one beside it (tokenizer.json)")
    ids = model.tokenizer.encode(args.perplexity.read_text(encoding="utf-8"))
    result = perplexity(model, ids, args.stride, args.batch_size, not args.no_progress)
    print(
        f"perplexity {result.perplexity:.3f} (mean NLL {result.nll:.4f} nats/token) over {result.tokens:,} tokens "
        f"of {args.perplexity}: {result.windows} windows of {result.window}, stride {result.stride}"
    )
