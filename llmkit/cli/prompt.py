"""`llmkit prompt` and `llmkit eval` (one module: they share the task options): thin calls into llmkit.prompts
and llmkit.evaluate."""

from __future__ import annotations

import argparse
import sys
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
a text file under a decoder-only model. With --labelled FILE instead of TASK: a fine-tuned classifier
on a labelled file of the fine-tuning format: accuracy, macro-F1, a per-class table and OUT/confusion.png
(sequence classifiers), or seqeval entity precision/recall/F1 overall and per type (token classifiers),
and OUT/results.json.
"""

_EVAL_EPILOG = """\
examples:
  llmkit eval runs/gpt2 sst2 --shots 0,1,5 --limit 200
  llmkit eval runs/flan-t5-base rt-polarity --shots 0,4 --method generate
  llmkit eval runs/gpt2 tasks/dialogsum.toml --shots 0,1 --limit 50 --data ~/dialogsum.test.jsonl
  llmkit eval runs/gpt2 --perplexity notes.txt --stride 512
  llmkit eval runs/sst2-minilm/best --labelled data/sentiment/sst2/dev.tsv
  llmkit eval runs/wnut17-minilm/best --labelled data/ner/wnut17/test.conll
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
    e.add_argument(
        "--labelled", type=Path, metavar="FILE",
        help="score a classifier (a checkpoint with a classification head) on a labelled file instead of a task: "
        "TSV/JSONL text and label (sequence classifiers) or CoNLL (token classifiers), as llmkit finetune reads",
    )  # fmt: skip
    e.add_argument("--text-field", default="sentence", help="--labelled: the text column (default sentence)")
    e.add_argument("--label-field", default="label", help="--labelled: the label column (default label)")
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


def _task(args: argparse.Namespace, shots: int):
    from llmkit.evaluate.preview import task_with_overrides

    task = task_with_overrides(args.task, args.data, args.examples, args.selection, args.seed)
    warning = leak_warning(task, shots)
    if warning:
        print(f"llmkit {args.command}: warning: {warning}", file=sys.stderr)
    return task


def leak_warning(task, shots: int) -> str | None:
    """A warning when the demonstrations are drawn from the very file that is evaluated: an item may be shown,
    with its answer, in its own prompt, and the score rises for no merit. (Without [examples] the task holds its
    demonstrations out of [data] itself.)"""
    if shots < 1 or task.examples is None:
        return None
    data, examples = Path(task.data.path), Path(task.examples.path)
    if data.resolve() != examples.resolve():
        return None
    return (
        f"the items and the demonstrations are the same file ({data}): a {shots}-shot prompt may show an item "
        "with its answer; pass a separate --examples file, or leave [examples] out so the task holds its "
        "demonstrations out of the items"
    )


def run_prompt(args: argparse.Namespace) -> None:
    from llmkit.errors import LlmkitError
    from llmkit.evaluate.preview import preview_prompt

    if args.shots < 0:  # a flag check, before the task file is read
        raise LlmkitError(f"--shots {args.shots} must be >= 0", "use 0 for zero-shot")
    preview = preview_prompt(_task(args, args.shots), args.shots, args.input, args.index, args.model, args.method)
    print(preview.render())


def run_eval(args: argparse.Namespace) -> None:
    from llmkit.cli._options import require_positive
    from llmkit.errors import LlmkitError
    from llmkit.evaluate import checkpoint_eval as ev
    from llmkit.evaluate.report import table

    if sum(x is not None for x in (args.task, args.perplexity, args.labelled)) != 1:
        raise LlmkitError(
            "give a TASK or --perplexity FILE or --labelled FILE: one of the three", "e.g. llmkit eval MODEL sst2"
        )
    require_positive("--batch-size", args.batch_size)
    progress = not args.no_progress
    if args.labelled is not None:
        _eval_labelled(args, progress)
        return
    if args.perplexity is not None:
        result = ev.checkpoint_perplexity(
            args.model,
            args.perplexity,
            args.stride,
            args.batch_size,
            progress,
            args.device,
            args.dtype,
            verify=not args.no_verify,
        )
        print(ev.perplexity_line(result, args.perplexity))
        return
    shots = ev.parse_shots(args.shots)
    task = _task(args, max(shots))
    limit = require_positive("--limit", args.limit) if args.limit is not None else None
    report = ev.evaluate_checkpoint(
        args.model,
        task,
        shots,
        limit,
        args.method,
        args.batch_size,
        progress,
        args.device,
        args.dtype,
        verify=not args.no_verify,
    )
    print(table(report))
    results, picture = ev.save_report(report, args.out or ev.default_out(task, args.model))
    print(f"wrote {results} and {picture}")


def _eval_labelled(args: argparse.Namespace, progress: bool) -> None:
    from llmkit.inference.loading import load_model, model_name, name_slug
    from llmkit.predict.labelled import evaluate_labelled, save, table

    model = load_model(args.model, args.device, args.dtype, verify=not args.no_verify)
    name = model_name(args.model)
    report = evaluate_labelled(
        model, args.labelled, args.text_field, args.label_field, batch_size=args.batch_size, progress=progress,
        name=name,
    )  # fmt: skip
    print(table(report))
    out = args.out or Path("runs") / "eval" / f"{args.labelled.name.split('.')[0]}-{name_slug(name)}"
    print("wrote " + " and ".join(map(str, save(report, out))))
