"""The quickstart under the old and the new thread policy, on a quiet machine and beside a busy process.

The old policy is torch's default (one OpenMP thread per core, OpenMP's default wait policy:
``LLMKIT_THREADS_POLICY=off``); the new one is llmkit/threads.py's measured default. Each run is
the quickstart's steps (examples/quickstart.sh: tokenizer, token shards, pretrain with
configs/quickstart.toml, greedy and sampled completions) in a temporary directory, so a user's
runs/quickstart is left alone. "busy" runs start one competing pure-Python busy loop (pinned
nowhere) before the steps and stop it after. Runs alternate (quiet old, quiet new, busy old, busy
new, then again) so the policies see the same machine.

It prints, per policy: quickstart wall seconds and pretrain ms per training step (the pretrain
summary's training seconds over its steps; evaluation and saving excluded), quiet and busy, the
ratio busy/quiet, and the thread decision the new policy printed. Medians over ``--repeats``.

    .venv/bin/python bench/threads_quickstart.py                 # the full quickstart (~15 min on 2 cores)
    .venv/bin/python bench/threads_quickstart.py --quick         # 60 pretrain steps, data made once
    .venv/bin/python bench/threads_quickstart.py --quick --extra 'passive2=OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE'
    .venv/bin/python bench/threads_quickstart.py --append        # also add the table to docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llmkit.files import atomic_write  # noqa: E402

CONFIG = ROOT / "configs" / "quickstart.toml"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Threads"
# the variables a policy sets; each run starts with all of them removed, then adds its own
THREAD_VARS = ("LLMKIT_THREADS", "LLMKIT_THREADS_POLICY", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
POLICIES = {"old": {"LLMKIT_THREADS_POLICY": "off"}, "new": {}}
QUICK_STEPS = 60
PROMPTS = ('"The for statement"', '"def read_file(path):"', '"A dictionary is"')
SUMMARY = re.compile(r"pretrained (\d+) steps .* in ([\d.]+) s")


@dataclass
class Run:
    policy: str
    busy: bool
    wall: float
    ms_per_step: float
    decision: str
    load: float  # 1-minute load average before the run: the machine's other work


@dataclass
class Bench:
    llmkit: list[str]
    work: Path
    quick: bool
    runs: list[Run] = field(default_factory=list)

    def steps(self, out: Path, data: Path | None) -> list[tuple[str, list[str]]]:
        """The quickstart's commands writing under ``out`` (token shards from ``data`` when given)."""
        cmds = []
        if data is None:
            data = out / "data"
            cmds += [
                ("tokenizer", ["tokenizer", "train", "--builtin", "python-docs", "--builtin", "python-stdlib",
                               "--kind", "bpe", "--vocab-size", "4096", "--out", str(out / "tokenizer")]),
                ("data", ["data", "tokenize", "builtin:python-docs", "builtin:python-stdlib",
                          "--tokenizer", str(out / "tokenizer"), "--out", str(data)]),
            ]  # fmt: skip
        pretrain = ["pretrain", "--config", str(CONFIG), "--train.data", str(data)]
        pretrain += ["--train.out_dir", str(out / "model")]
        if self.quick:
            pretrain += ["--train.steps", str(QUICK_STEPS), "--train.warmup_steps", "6"]
            pretrain += ["--train.eval_interval", str(QUICK_STEPS), "--train.save_interval", str(QUICK_STEPS)]
        prompts = out / "prompts.jsonl"
        generate = ["generate", str(out / "model"), "--file", str(prompts), "--max-new-tokens", "40", "--echo"]
        sampled = ["--do-sample", "--temperature", "0.8", "--top-k", "40", "--seed", "0"]
        return cmds + [("pretrain", pretrain), ("greedy", generate), ("sampled", generate + sampled)]

    def run(self, policy: str, extra_env: dict[str, str], busy: bool, data: Path | None) -> Run:
        """One quickstart under ``policy``; a busy loop beside it when ``busy``."""
        out = Path(tempfile.mkdtemp(dir=self.work, prefix=f"{policy}-"))
        (out / "prompts.jsonl").write_text("\n".join(PROMPTS) + "\n")
        env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS} | extra_env
        load = os.getloadavg()[0]
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            start = time.perf_counter()
            ms, decision = float("nan"), ""
            for name, args in self.steps(out, data):
                proc = subprocess.run(self.llmkit + args, env=env, cwd=ROOT, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{policy}: llmkit {name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
                if name == "pretrain":
                    ms, decision = _pretrain_figures(proc.stdout + proc.stderr)
            wall = time.perf_counter() - start
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
            shutil.rmtree(out, ignore_errors=True)
        run = Run(policy, busy, wall, ms, decision, load)
        print(f"  {policy:>8} {'busy' if busy else 'quiet':>5}: {wall:7.1f} s, {ms:7.1f} ms/step, "
              f"load {load:.2f}; {decision or '-'}", flush=True)  # fmt: skip
        self.runs.append(run)
        return run


def _pretrain_figures(text: str) -> tuple[float, str]:
    """(ms per training step, the printed thread decision) from pretrain's output."""
    match = SUMMARY.search(text)
    ms = 1000 * float(match.group(2)) / int(match.group(1)) if match else float("nan")
    decision = next((line.strip() for line in text.splitlines() if line.startswith("threads: ")), "")
    return ms, decision


def make_data(bench: Bench) -> Path:
    """Tokenizer and shards once (--quick): the runs then time pretraining and generation only."""
    out = bench.work / "shared"
    for _, args in bench.steps(out, None)[:2]:
        subprocess.run(bench.llmkit + args, cwd=ROOT, check=True, capture_output=True)
    return out / "data"


def table(runs: list[Run], policies: list[str]) -> str:
    """Markdown: per policy, median wall s and ms/step quiet and busy, and busy/quiet ratios."""
    lines = [
        "| policy | quiet s | busy s | busy/quiet | quiet ms/step | busy ms/step | busy/quiet | decision when busy |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for policy in policies:
        q = [r for r in runs if r.policy == policy and not r.busy]
        b = [r for r in runs if r.policy == policy and r.busy]
        if not q or not b:
            continue
        qs, bs = statistics.median(r.wall for r in q), statistics.median(r.wall for r in b)
        qm, bm = statistics.median(r.ms_per_step for r in q), statistics.median(r.ms_per_step for r in b)
        lines.append(f"| {policy} | {qs:.1f} | {bs:.1f} | {bs / qs:.2f}x | {qm:.0f} | {bm:.0f} | {bm / qm:.2f}x | "
                     f"{b[-1].decision or '-'} |")  # fmt: skip
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def append(text: str) -> None:
    """Add ``text`` at the end of the Threads section of docs/benchmarks.md (atomically)."""
    doc = BENCHMARKS.read_text(encoding="utf-8")
    start = doc.find(f"\n{SECTION}\n")
    if start < 0:
        doc = doc.rstrip("\n") + f"\n\n{SECTION}\n\n{text}\n"
    else:
        end = doc.find("\n## ", start + 1)
        end = len(doc) if end < 0 else end
        doc = doc[:end].rstrip("\n") + f"\n\n{text}\n" + doc[end:]
    atomic_write(BENCHMARKS, doc)


def parse_extra(specs: list[str]) -> dict[str, dict[str, str]]:
    """'NAME=VAR=VALUE VAR=VALUE' -> {NAME: {VAR: VALUE}}: more policies to compare."""
    out = {}
    for spec in specs:
        name, _, assignments = spec.partition("=")
        out[name] = dict(a.split("=", 1) for a in assignments.split())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} pretrain steps; tokenizer and data once")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of alternating runs (medians are reported)")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=VAR=VALUE ...",
                        help="another policy as environment variables, e.g. 'one=OMP_NUM_THREADS=1'")  # fmt: skip
    parser.add_argument("--no-busy", action="store_true", help="quiet runs only")
    parser.add_argument("--append", action="store_true", help="add the table to docs/benchmarks.md")
    args = parser.parse_args()

    policies = POLICIES | parse_extra(args.extra)
    llmkit = [sys.executable, "-m", "llmkit"]
    with tempfile.TemporaryDirectory(prefix="llmkit-threads-") as work:
        bench = Bench(llmkit, Path(work), args.quick)
        data = make_data(bench) if args.quick else None
        for repeat in range(args.repeats):
            print(f"round {repeat + 1}/{args.repeats}", flush=True)
            for busy in (False,) if args.no_busy else (False, True):
                for name, env in policies.items():
                    bench.run(name, env, busy, data)
    if args.no_busy:
        return
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    mode = f"--quick ({QUICK_STEPS} pretrain steps, data made once)" if args.quick else "full quickstart"
    text = (f"{when}, {machine()}: `bench/threads_quickstart.py` {mode}, {args.repeats} round(s), medians; "
            f"load average before the runs {min(r.load for r in bench.runs):.2f}-{max(r.load for r in bench.runs):.2f}."
            f"\n\n{table(bench.runs, list(policies))}")  # fmt: skip
    print("\n" + text)
    if args.append:
        append(text)
        print(f"appended to {BENCHMARKS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
