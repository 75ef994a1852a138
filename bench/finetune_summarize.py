"""Summarization on DialogSum: a tiny T5 fine-tuned, next to the same base prompted 0, 1 and 5 shots.

The base is the quickstart-style tiny encoder-decoder (configs/tiny-encoder-decoder.toml, about 1M
parameters): a Unigram tokenizer trained on the builtin Python docs, token shards of the builtin
docs and standard library, span-corruption pretraining (`--pretrain-steps`, the config's 300 by
default: a few minutes on one CPU core, far too short to learn English; the point is the
comparison on one base). Each step is the CLI command the config's comments give, run as a
subprocess; `--work DIR` keeps them and a second run reuses the base.

Then, on the same `--limit` test dialogues (tasks/dialogsum.toml's seeded sample; dialogues whose
0-shot prompt exceeds the model's window are skipped, the same ones for every setting):
- the base through llmkit's evaluator (the code `llmkit eval` runs) at each of `--shots`:
  greedy summaries, ROUGE-1/2/L against the best of three references;
- `llmkit finetune` of the same base (configs/finetune/dialogsum-tiny-t5.toml's settings,
  `--steps` and `--train-examples` as flags; OUT/best is the checkpoint of the best dev ROUGE-L),
  then OUT/best through the same evaluator at 0 shots.
With `--inputs prompt` (default) the fine-tuning inputs are the task's 0-shot prompts (instruction,
"Dialogue:", the dialogue, "Summary:"), the text the evaluator shows the model, as T5 is fine-tuned
behind a task prefix; `--inputs raw` trains on the bare dialogues, as the config does.

Prints one table (setting, n, ROUGE-1/2/L, prompts that lost demonstrations to the window, seconds)
and "fine-tuned ROUGE-L X vs best prompting Y (k-shot)"; exits 1 when fine-tuning is not higher.

    python bench/finetune_summarize.py [--work DIR] [--pretrain-steps 300] [--window 1024] [--limit 100]
                                       [--shots 0,1,5] [--steps 500] [--block-size 256] [--train-examples 4000]
                                       [--dev-limit 50] [--inputs prompt|raw] [--threads N]

Data license: DialogSum (data/dialogsum) is CC BY-NC-SA 4.0, NON-COMMERCIAL: do not use its
results or outputs commercially (tasks/dialogsum.toml).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs/tiny-encoder-decoder.toml"
FINETUNE_CONFIG = ROOT / "configs/finetune/dialogsum-tiny-t5.toml"
TRAIN = ROOT / "data/dialogsum/dialogsum.train.jsonl.gz"
DEV = ROOT / "data/dialogsum/dialogsum.dev.jsonl.gz"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=None, help="scratch folder, reused between runs (default: a new temporary one)")
    p.add_argument("--pretrain-steps", type=int, default=300, help="span-corruption steps of the base")
    p.add_argument("--window", type=int, default=1024, help="the base's max_seq_len (the preset's is 256)")
    p.add_argument("--block-size", type=int, default=256, help="fine-tuning: inputs and targets cut to this")
    p.add_argument("--limit", type=int, default=100, help="test dialogues scored (a seeded sample)")
    p.add_argument("--shots", default="0,1,5")
    p.add_argument("--steps", type=int, default=500, help="fine-tuning steps")
    p.add_argument("--train-examples", type=int, default=4000)
    p.add_argument("--dev-limit", type=int, default=50, help="dev dialogues summarized at each fine-tuning eval")
    p.add_argument("--eval-interval", type=int, default=None, help="fine-tuning dev evals (default: steps / 2)")
    p.add_argument("--inputs", choices=("prompt", "raw"), default="prompt")
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = p.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch loads, here and in the subprocesses
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from llmkit.evaluate.checkpoint_eval import parse_shots
    from llmkit.evaluate.tasks import load_task

    shots = parse_shots(args.shots)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="llmkit-summarize-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    task = load_task("dialogsum")
    print(f"DialogSum (CC BY-NC-SA 4.0, non-commercial): {args.limit} test dialogues, shots {shots}; "
          f"fine-tuning {args.steps} steps on {args.train_examples} training dialogues ({args.inputs} inputs); "
          f"torch threads {torch.get_num_threads()}; work {work}; {uptime()}", flush=True)  # fmt: skip

    start = time.perf_counter()
    base = make_base(work, args.pretrain_steps, args.window, args.threads)
    print(f"[base] {base} ready in {time.perf_counter() - start:.0f} s, {uptime()}", flush=True)

    rows = []
    for k in shots:
        rows.append(score(base, task, k, args.limit, args.batch_size, f"{k}-shot"))
    tuned, train_seconds = finetune_base(base, task, work, args)
    rows.append(score(tuned, task, 0, args.limit, args.batch_size, "fine-tuned"))

    print()
    print(table(rows))
    skipped = rows[0]["skipped"]
    if skipped:
        print(f"{skipped} of {args.limit} dialogues skipped in every setting: their 0-shot prompt exceeds the "
              f"{rows[0]['window']}-token window")  # fmt: skip
    print(f"fine-tuning: {train_seconds:.0f} s for {args.steps} steps (dev evals included); "
          f"base pretraining: {args.pretrain_steps} steps; {uptime()}")  # fmt: skip
    prompted = max(rows[:-1], key=lambda r: r["rougeL"])
    ft = rows[-1]["rougeL"]
    print(f"fine-tuned ROUGE-L {ft:.3f} vs best prompting {prompted['rougeL']:.3f} ({prompted['setting']})")
    return 0 if ft > prompted["rougeL"] else 1


def uptime() -> str:
    """The 1-minute load average: other processes share the CPUs, so each figure carries it."""
    return f"load {os.getloadavg()[0]:.2f}"


def llmkit(*argv: str, threads: int | None) -> None:
    """One llmkit CLI command, as the config's comments give it, echoed; a failure ends the bench."""
    cmd = [sys.executable, "-m", "llmkit", *argv, *(["--threads", str(threads)] if threads else [])]
    print("$ llmkit " + " ".join(argv), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def make_base(work: Path, steps: int, window: int, threads: int | None) -> Path:
    """The tiny T5 pretrained with span corruption: tokenizer -> token shards -> pretrain, each step
    skipped when ``work`` already holds its finished output.

    The window is raised from the preset's 256 tokens (T5's relative position bias has no table to
    grow): a DialogSum prompt takes a median 380 tokens of this Python-trained Unigram tokenizer, so
    at 256 four dialogues in five would be skipped even 0-shot; 1024 fits 99% of them."""
    tok, data, base = work / "tok-unigram", work / "data-unigram", work / f"tiny-t5-{steps}-w{window}"
    if not (tok / "tokenizer.json").exists():
        llmkit("tokenizer", "train", "--builtin", "python-docs", "--kind", "unigram", "--vocab-size", "4096",
               "--out", str(tok), threads=threads)  # fmt: skip
    if not (data / "meta.json").exists():  # written last (the directory is renamed into place)
        llmkit("data", "tokenize", "builtin:python-docs", "builtin:python-stdlib", "--tokenizer", str(tok),
               "--out", str(data), threads=threads)  # fmt: skip
    if not _finished(base, steps):
        llmkit("pretrain", "--config", str(BASE_CONFIG.relative_to(ROOT)), "--train.data", str(data),
               "--train.out_dir", str(base), "--train.steps", str(steps), "--train.save_interval", str(steps),
               "--model.max_seq_len", str(window), threads=threads)  # fmt: skip
    return base


def _finished(run: Path, steps: int) -> bool:
    """Whether ``run`` holds a pretraining run saved at its last step (not one cut short)."""
    metrics = run / "metrics.jsonl"
    if not (run / "config.json").exists() or not metrics.exists():
        return False
    last = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return any(r.get("step") == steps for r in last)


def score(model_dir: Path, task, k: int, limit: int, batch_size: int, setting: str) -> dict:
    """ROUGE of ``model_dir`` on the task's seeded sample at ``k`` shots, through `llmkit eval`'s code."""
    from llmkit.evaluate.checkpoint_eval import evaluate_checkpoint

    start = time.perf_counter()
    report = evaluate_checkpoint(model_dir, task, [k], limit, None, batch_size, False, "cpu")
    seconds = time.perf_counter() - start
    r = report.results[0]
    row = {"setting": setting, "n": r.n, **r.metrics, "lost": r.counts["prompts_with_dropped_examples"],
           "dropped": r.counts["dropped_examples"], "empty": r.counts["empty_outputs"], "seconds": seconds,
           "skipped": len(report.skipped), "window": report.window,
           "sample": r.predictions[0]["output"] if r.predictions else ""}  # fmt: skip
    print(f"[{setting}] ROUGE-L {row['rougeL']:.3f} on {r.n} dialogues in {seconds:.0f} s, {uptime()}; "
          f"first summary: {row['sample'][:100]!r}", flush=True)  # fmt: skip
    return row


def prompt_pairs(task, source: Path, out: Path, limit: int | None) -> Path:
    """``source``'s dialogue/summary pairs rewritten as {"input": the task's 0-shot prompt, "target": summary}
    in ``out`` (JSONL), so the fine-tuned model reads at training what the evaluator shows it."""
    from llmkit.prompts import build_prompt

    lines = []
    with gzip.open(source, "rt", encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(lines) >= limit:
                break
            record = json.loads(line)
            text = build_prompt(task.prompt, [], record["dialogue"], None, None, 0).text
            lines.append(json.dumps({"input": text, "target": record["summary"]}, ensure_ascii=False))
    from llmkit.files import atomic_write

    return atomic_write(out, "\n".join(lines) + "\n")


def finetune_base(base: Path, task, work: Path, args) -> tuple[Path, float]:
    """`llmkit finetune` of ``base`` with the DialogSum config's settings; OUT/best and the seconds."""
    import shutil

    from llmkit.finetune import finetune
    from llmkit.finetune.config import load_finetune_config

    out = work / f"finetune-{args.inputs}-{args.steps}"
    shutil.rmtree(out, ignore_errors=True)  # each run fine-tunes from the start
    if args.inputs == "prompt":
        files = {"train_file": str(prompt_pairs(task, TRAIN, work / "train-prompts.jsonl", args.train_examples)),
                 "dev_file": str(prompt_pairs(task, DEV, work / "dev-prompts.jsonl", None)),
                 "text_field": "input", "label_field": "target"}  # fmt: skip
    else:
        files = {"train_file": str(TRAIN), "dev_file": str(DEV)}
    interval = args.eval_interval or max(1, args.steps // 2)
    flags = {
        "model": {"init_from": str(base)},
        "task": {**files, "max_train_examples": args.train_examples, "dev_limit": args.dev_limit},
        "train": {"out_dir": str(out), "steps": args.steps, "eval_interval": interval, "save_interval": interval,
                  "warmup_steps": min(25, args.steps // 10), "block_size": args.block_size},
    }  # fmt: skip
    shown = " ".join(f"--{t}.{k} {v}" for t, table in flags.items() for k, v in table.items())
    print(f"$ llmkit finetune --config {FINETUNE_CONFIG.relative_to(ROOT)} {shown}", flush=True)
    start = time.perf_counter()
    summary = finetune(load_finetune_config(FINETUNE_CONFIG, flags))
    seconds = time.perf_counter() - start
    print(f"[finetune] {seconds:.0f} s, best {summary.get('best')}, {uptime()}", flush=True)
    return out / "best", seconds


def table(rows: list[dict]) -> str:
    header = ["setting", "n", "ROUGE-1", "ROUGE-2", "ROUGE-L", "lost demos", "empty", "seconds"]
    cells = [
        [r["setting"], str(r["n"]), f"{r['rouge1']:.3f}", f"{r['rouge2']:.3f}", f"{r['rougeL']:.3f}",
         f"{r['lost']} (-{r['dropped']} ex.)" if r["lost"] else "0", str(r["empty"]), f"{r['seconds']:.0f}"]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(c) for c in col) for col in zip(header, *cells, strict=True)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *cells])


if __name__ == "__main__":
    sys.exit(main())
