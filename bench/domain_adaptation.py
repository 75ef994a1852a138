"""Domain adaptation on a laptop: BloombergGPT's question at toy scale (docs/domain_adaptation.md).

Does a model trained on a 51/49 mix of domain and general text do as well on domain text as one
trained on domain text alone, and as well on general text as one trained on general text alone?
And how does that compare with general pretraining followed by continued pretraining on the domain?

1. corpora: a "general" corpus from the project's data that is not domain text (tinyshakespeare,
   DialogSum, the English side of fra-eng, rt-polarity; GENERAL below, with their licenses) and the
   three domain corpora of data/domain (legal, medical, finance); each split into a fixed held-out
   part (a hash of each document's text: the same for any seed or size) and a training part (the
   rest, shuffled with a fixed seed), written one document per line;
2. one byte-level BPE tokenizer trained on the four training parts alike (`llmkit tokenizer train`'s
   trainer), used by every run, so perplexities are per the same tokens; and tokens per word of each
   domain's held-out text under a general-trained and a domain-trained tokenizer of equal vocabulary
   (`llmkit data stats`'s counter), with the words the general one splits most;
3. token directories by `llmkit data tokenize`'s library (``tokenize_corpus``): general, each domain,
   and each domain mixed 51/49 with general by weight; every one capped at the same number of
   training tokens, so each run draws from a pool of the same size;
4. per seed, the same decoder at the same compute (tokens x FLOPs per token, checked) trained by
   ``llmkit.train.pretrain`` on general only, on each domain only, on each mix, and general for half
   the steps followed by ``llmkit finetune`` kind "continue" (method full) on the domain for the rest;
5. sliding-window perplexity (``llmkit.evaluate.perplexity``) of every run's final model on the four
   held-out texts; a table of means over seeds with their spread, a plot, and the expectation
   ("the mix is close to domain-only on domain text and close to general-only on general text")
   measured.

Runs go to two worker processes of one thread each. ``--real`` (a separate part, its own budget) is
the same question on a real model: SmolLM2-135M-Instruct as it is, continued on the medical corpus
(full and LoRA), perplexity on held-out medical and general text: what it learns and what it forgets.

  .venv/bin/python bench/domain_adaptation.py                  # the full bench (about 20-30 min, 2 cores)
  .venv/bin/python bench/domain_adaptation.py --quick          # tiny sizes, a check of the whole path
  .venv/bin/python bench/domain_adaptation.py --real           # SmolLM2 on medical text
  (--real needs models/smollm2-135m-instruct: `llmkit models get smollm2-135m-instruct`; or --model DIR)

A rerun with the same --out reuses what is finished (corpora, tokenizers, token directories, runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# the other parts of the bench; spawned workers unpickle this module's functions and classes by its name
sys.path.insert(1, str(Path(__file__).resolve().parent))

from domain_corpus import (  # noqa: E402
    DOMAINS,
    EVAL_SETS,
    assemble_corpora,
    heldout_ids,
    render_tokenizers,
    shared_tokenizer,
    tokenize_all,
    tokenizer_comparison,
)
from domain_real import REAL_QUICK, RealSettings, render_real, run_real  # noqa: E402

from llmkit.errors import LlmkitError  # noqa: E402
from llmkit.files import atomic_write  # noqa: E402
from llmkit.scale.sweep import output_to  # noqa: E402

KINDS = ("general", "domain", "mix", "continue")  # the four ways of spending the budget
KIND_LABELS = {
    "general": "general only",
    "domain": "domain only",
    "mix": "mix 51/49",
    "continue": "general, then domain",
}


# ---- settings ---------------------------------------------------------------------------------
@dataclass
class Settings:
    """Everything that decides the results; a rerun in the same --out must use the same."""

    seeds: list[int] = field(default_factory=lambda: [0, 1])
    heldout_fraction: float = 0.08  # of each source's documents, by a hash of the text
    general_words: int = 250_000  # per general source, of its training part
    tokenizer_chars: int = 2_000_000  # of each training part, for the shared tokenizer
    vocab: int = 2048  # the shared tokenizer (every run's)
    compare_vocab: int = 8192  # the general- vs domain-trained tokenizers of the tokens-per-word table
    pool_tokens: int = 1_000_000  # training tokens of every token directory (each run draws from this many)
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "preset": "tiny-llama-10m",
            "n_layer": 4,
            "d_model": 128,
            "n_head": 4,
            "n_kv_head": 2,
            "d_ff": 352,
            "max_seq_len": 128,
        }
    )
    steps: int = 200  # per run; the continued run: steps // 2 general, the rest domain
    batch_size: int = 16
    block_size: int = 128
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_fraction: float = 0.1
    eval_tokens: int = 16_384  # per held-out text
    eval_doc_tokens: int = 2048  # at most this many from each held-out document (more documents, less of each)
    stride: int = 64  # of the sliding window (the window is max_seq_len)
    workers: int = 2
    threads: int = 1  # torch threads per worker

    def train_fields(self, steps: int) -> dict[str, Any]:
        """[train] of one run (or phase) of ``steps`` steps: warmup, cosine to min_lr, evaluation at the end."""
        return {
            "steps": steps,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "lr": self.lr,
            "min_lr": self.min_lr,
            "warmup_steps": max(1, round(self.warmup_fraction * steps)),
            "weight_decay": 0.1,
            "beta2": 0.99,
            "eval_interval": steps,
            "eval_batches": 4,
            "save_interval": steps,
            "log_interval": max(1, steps // 10),
            "dtype": "bf16",
            "device": "cpu",
        }


QUICK = {
    "seeds": [0, 1],
    "general_words": 20_000,
    "tokenizer_chars": 200_000,
    "vocab": 512,
    "compare_vocab": 1024,
    "pool_tokens": 60_000,
    "model": {
        "preset": "tiny-llama-10m",
        "n_layer": 1,
        "d_model": 32,
        "n_head": 2,
        "n_kv_head": 1,
        "d_ff": 64,
        "max_seq_len": 32,
    },
    "steps": 6,
    "batch_size": 4,
    "block_size": 32,
    "eval_tokens": 512,
    "eval_doc_tokens": 128,
    "stride": 16,
}


# ---- 4. the runs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One training run: ``steps`` steps on the token directory ``data``, from scratch (``after`` None:
    ``llmkit pretrain``) or continued from job ``after``'s model (``llmkit finetune`` kind continue).
    ``kind`` names the row of the table it gives (None: a first phase only, not evaluated)."""

    name: str
    seed: int
    kind: str | None
    domain: str | None
    data: str
    steps: int
    after: str | None = None


def plan_jobs(settings: Settings) -> list[Job]:
    """Per seed: general only, each domain only, each mix, and general for ``steps // 2`` steps
    continued on each domain for the rest (the general half trained once, shared by the three).
    First phases come first, so the runs that continue them can start early."""
    first, second = settings.steps // 2, settings.steps - settings.steps // 2
    jobs = []
    for seed in settings.seeds:
        jobs.append(Job(f"s{seed}-general-half", seed, None, None, "general", first))
        jobs.append(Job(f"s{seed}-general", seed, "general", None, "general", settings.steps))
        for d in DOMAINS:
            jobs.append(Job(f"s{seed}-{d}", seed, "domain", d, d, settings.steps))
            jobs.append(Job(f"s{seed}-{d}-mix", seed, "mix", d, f"{d}-mix", settings.steps))
    for seed in settings.seeds:
        for d in DOMAINS:
            jobs.append(Job(f"s{seed}-general-{d}", seed, "continue", d, d, second, f"s{seed}-general-half"))
    return jobs


def model_config(settings: Settings, data_dir: str | os.PathLike):
    """The decoder every run trains (``settings.model``, vocabulary and special ids from the data's tokenizer)."""
    from llmkit.runconfig import run_config_from_tables

    tables = {"model": dict(settings.model), "train": {**settings.train_fields(1), "data": str(data_dir)}}
    return run_config_from_tables(tables, "bench/domain_adaptation.py")[0]


def compute_budgets(jobs: list[Job], settings: Settings, flops_per_token: float) -> dict[str, dict[str, float]]:
    """Training tokens and FLOPs behind each evaluated run's final model, its first phase included."""
    by_name = {job.name: job for job in jobs}
    out = {}
    for job in jobs:
        if job.kind is None:
            continue
        steps, current = 0, job
        while current is not None:
            steps += current.steps
            current = by_name[current.after] if current.after else None
        tokens = steps * settings.batch_size * settings.block_size
        out[job.name] = {"steps": steps, "tokens": tokens, "flops": tokens * flops_per_token}
    return out


def check_equal_compute(budgets: dict[str, dict[str, float]]) -> float:
    """The FLOPs every run spent (all equal), or an error naming the run that differs."""
    flops = {name: b["flops"] for name, b in budgets.items()}
    first = next(iter(flops.values()))
    for name, value in flops.items():
        if not math.isclose(value, first, rel_tol=1e-12):
            raise LlmkitError(
                f"run {name} trains {value:.3e} FLOPs, others {first:.3e}",
                "every run must have the same tokens x FLOPs per token",
            )
    return first


def run_dir(out: Path, job: Job) -> Path:
    return out / "runs" / job.name


def model_dir(out: Path, job: Job) -> Path:
    """Where a job's final model is: the pretraining run itself, or a continued run's OUT/last."""
    return run_dir(out, job) / "last" if job.after else run_dir(out, job)


def train_job(out: Path, job: Job, settings: Settings) -> None:
    """Train one job with the library's commands: ``pretrain`` (from scratch) or ``finetune`` (continue)."""
    from llmkit.config import TrainConfig
    from llmkit.finetune.config import FinetuneConfig, MethodConfig, ModelTable, TaskConfig
    from llmkit.finetune.run import finetune
    from llmkit.train import pretrain

    fields = {
        **settings.train_fields(job.steps),
        "data": str(out / "data" / job.data),
        "out_dir": str(run_dir(out, job)),
        "seed": job.seed,
    }
    if job.after is None:
        cfg = model_config(settings, fields["data"])
        cfg.name = job.name
        pretrain(cfg, TrainConfig(**fields))
        return
    task = TaskConfig(kind="continue", data=fields.pop("data"))
    start = ModelTable(init_from=str(out / "runs" / job.after))  # a first phase is always a pretraining run
    finetune(FinetuneConfig(start, task, MethodConfig(name="full"), TrainConfig(**fields)))


def heldout_perplexity(directory: Path, ids: dict[str, list[int]], stride: int, batch_size: int = 16):
    """Sliding-window perplexity (``llmkit.evaluate.perplexity``) of a checkpoint on each held-out text."""
    import torch

    from llmkit import checkpoint
    from llmkit.evaluate.perplexity import perplexity

    model = checkpoint.load(directory, dtype=torch.float32)
    return {name: perplexity(model, text, stride, batch_size, progress=False).perplexity for name, text in ids.items()}


def _worker(out: str, job: Job, settings: Settings, ids: dict[str, list[int]]) -> dict[str, Any]:
    """One job in a worker process: train, then evaluate; its output (the training bars) into OUT/logs/JOB.log."""
    import torch

    torch.set_num_threads(settings.threads)
    root = Path(out)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    with output_to(root / "logs" / f"{job.name}.log"):
        try:
            started = time.perf_counter()
            train_job(root, job, settings)
            trained = time.perf_counter()
            ppl = heldout_perplexity(model_dir(root, job), ids, settings.stride) if job.kind else {}
        except LlmkitError as err:
            return {"name": job.name, "error": str(err)}
    result = {
        "name": job.name,
        "seed": job.seed,
        "kind": job.kind,
        "domain": job.domain,
        "perplexity": ppl,
        "train_seconds": round(trained - started, 1),
        "eval_seconds": round(time.perf_counter() - trained, 1),
    }
    atomic_write(run_dir(root, job) / "result.json", json.dumps(result, indent=2) + "\n")
    return result


def run_jobs(out: Path, jobs: list[Job], settings: Settings, ids: dict[str, list[int]]) -> list[dict[str, Any]]:
    """Every job in ``settings.workers`` spawned processes, a job once the one it continues has finished;
    jobs with a result.json from an earlier run are not trained again."""
    import multiprocessing

    done: dict[str, dict[str, Any]] = {}
    for job in jobs:
        saved = run_dir(out, job) / "result.json"
        if saved.is_file():
            done[job.name] = json.loads(saved.read_text())
    pending = [job for job in jobs if job.name not in done]
    print(
        f"runs: {len(jobs)} ({len(done)} done before), {settings.workers} workers x {settings.threads} thread(s); "
        f"logs in {out / 'logs'}",
        flush=True,
    )
    started, total = time.perf_counter(), len(pending)
    context = multiprocessing.get_context("spawn")  # torch and its thread pools do not survive fork
    with ProcessPoolExecutor(max_workers=settings.workers, mp_context=context) as pool:
        running: dict[Any, Job] = {}
        while pending or running:
            for job in [j for j in pending if j.after is None or j.after in done]:
                if len(running) < settings.workers:
                    running[pool.submit(_worker, str(out), job, settings, ids)] = job
                    pending.remove(job)
            if not running:
                raise LlmkitError(f"jobs {[j.name for j in pending]} wait on runs that never ran", "check plan_jobs")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                result = future.result()
                if "error" in result:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise LlmkitError(f"run {job.name} failed: {result['error']}", f"see {out / 'logs' / job.name}.log")
                done[job.name] = result
                count = total - len(pending) - len(running)
                ppl = ", ".join(f"{k} {v:.1f}" for k, v in result["perplexity"].items())
                print(
                    f"  [{count}/{total}] {job.name}: {result['train_seconds']:.0f} s training"
                    + (f", held-out perplexity {ppl}" if ppl else "")
                    + f" ({time.perf_counter() - started:.0f} s so far)",
                    flush=True,
                )
    return [done[job.name] for job in jobs if job.kind]


# ---- 5. the table, the expectation, the plot --------------------------------------------------
ROWS = [("general", None)] + [(kind, d) for d in DOMAINS for kind in ("domain", "mix", "continue")]


def row_label(kind: str, domain: str | None) -> str:
    return {
        "general": "general only",
        "domain": f"{domain} only",
        "mix": f"{domain} + general, 51/49",
        "continue": f"general, then {domain}",
    }[kind]


def cell(values: list[float]) -> dict[str, float]:
    """Mean over seeds, its spread (half the range: with two seeds, each seed is mean +- spread), min, max, n."""
    lo, hi = min(values), max(values)
    return {"mean": statistics.fmean(values), "spread": (hi - lo) / 2, "min": lo, "max": hi, "n": len(values)}


def table_cells(results: list[dict[str, Any]]) -> dict[tuple[str, str | None], dict[str, dict[str, float]]]:
    """(kind, domain) -> held-out text -> :func:`cell` over the seeds' perplexities. The general-only
    run is one row (domain None); every row must have the same seeds, at least two."""
    values: dict[tuple, dict[str, list[float]]] = {}
    seeds: dict[tuple, list[int]] = {}
    for r in results:
        key = (r["kind"], None if r["kind"] == "general" else r["domain"])
        seeds.setdefault(key, []).append(r["seed"])
        for text, ppl in r["perplexity"].items():
            values.setdefault(key, {}).setdefault(text, []).append(ppl)
    expected = sorted(seeds.get(ROWS[0], []))
    for key in ROWS:
        found = sorted(seeds.get(key, []))
        if found != expected or len(set(found)) < 2 or len(found) != len(set(found)):
            raise LlmkitError(
                f"row {row_label(*key)} has seeds {found}, the general row {expected}",
                "every row needs the same two or more seeds, each once",
            )
    return {key: {text: cell(v) for text, v in values[key].items()} for key in ROWS}


def _number(value: float) -> str:
    return f"{value:.1f}" if value >= 100 else f"{value:.2f}"


def render_table(cells: dict) -> str:
    """The perplexity table in Markdown: a row per run, a column per held-out text, mean +- spread."""
    lines = [
        "| trained on | " + " | ".join(f"{t} held-out" for t in EVAL_SETS) + " |",
        "|---|" + "---:|" * len(EVAL_SETS),
    ]
    for key in ROWS:
        row = cells[key]
        parts = [f"{_number(row[t]['mean'])} ± {_number(row[t]['spread'])}" for t in EVAL_SETS]
        lines.append(f"| {row_label(*key)} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def expectation(cells: dict) -> dict[str, dict[str, float]]:
    """Per domain, the expectation measured: mix / specialist perplexity on domain and on general text,
    and how much of the gap between the two specialists the mix closes there (in log perplexity,
    i.e. loss: 1 = as good as the specialist, 0 = as bad as the other one); the same for the continued run."""
    general = cells[("general", None)]
    out = {}
    for d in DOMAINS:
        spec = {d: cells[("domain", d)][d]["mean"], "general": general["general"]["mean"]}
        other = {d: general[d]["mean"], "general": cells[("domain", d)]["general"]["mean"]}
        entry = {}
        for kind in ("mix", "continue"):
            for text in (d, "general"):
                mine = cells[(kind, d)][text]["mean"]
                tag = "domain" if text == d else "general"
                entry[f"{kind}_{tag}_ratio"] = mine / spec[text]
                gap = math.log(other[text]) - math.log(spec[text])
                entry[f"{kind}_{tag}_closed"] = (math.log(other[text]) - math.log(mine)) / gap if gap else float("nan")
        out[d] = entry
    return out


def render_expectation(found: dict[str, dict[str, float]]) -> str:
    lines = [
        "| domain | mix / domain-only, on domain text | gap closed | mix / general-only, on general text "
        "| gap closed | continued / domain-only, on domain | continued / general-only, on general |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d, e in found.items():
        lines.append(
            f"| {d} | {e['mix_domain_ratio']:.3f} | {e['mix_domain_closed']:.0%} | {e['mix_general_ratio']:.3f} "
            f"| {e['mix_general_closed']:.0%} | {e['continue_domain_ratio']:.3f} "
            f"| {e['continue_general_ratio']:.3f} |"
        )
    return "\n".join(lines)


def plot(cells: dict, path: Path, title: str) -> None:
    """One panel per domain: perplexity on its held-out text and on general held-out text, a bar per
    way of training, the seeds' range as error bars, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DOMAINS), figsize=(4.2 * len(DOMAINS), 3.8), sharey=True)
    colors = {"general": "#7f7f7f", "domain": "#1f77b4", "mix": "#2ca02c", "continue": "#d62728"}
    width = 0.2
    for ax, d in zip(axes, DOMAINS, strict=True):
        for i, kind in enumerate(KINDS):
            row = cells[("general", None) if kind == "general" else (kind, d)]
            stats = [row[text] for text in (d, "general")]
            means = [s["mean"] for s in stats]
            errors = [[s["mean"] - s["min"] for s in stats], [s["max"] - s["mean"] for s in stats]]
            xs = [x + (i - 1.5) * width for x in range(2)]
            ax.bar(xs, means, width, yerr=errors, capsize=3, color=colors[kind], label=KIND_LABELS[kind])
        ax.set_xticks(range(2), [f"{d} held-out", "general held-out"])
        ax.set_yscale("log")
        ax.set_title(d)
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].set_ylabel("perplexity (lower is better)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main -------------------------------------------------------------------------------------
def check_settings(out: Path, settings: Settings) -> None:
    """OUT/settings.json: a rerun in the same directory must use the same settings (it reuses results)."""
    path = out / "settings.json"
    mine = dataclasses.asdict(settings)
    decisive = {k: v for k, v in mine.items() if k not in ("workers", "threads")}
    if path.is_file():
        saved = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("workers", "threads")}
        if saved != decisive:
            key = next(k for k in decisive if saved.get(k) != decisive[k])
            raise LlmkitError(
                f"{out} holds a run with {key}={saved.get(key)!r}, not {decisive[key]!r}",
                "use another --out, or delete it",
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(mine, indent=2) + "\n")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def bench(out: Path, settings: Settings, picture: Path) -> dict[str, Any]:
    """The whole small-model experiment; returns (and writes to OUT/results.json) its figures."""
    import torch

    from llmkit.models import build_model
    from llmkit.train import flops_per_token

    started = time.perf_counter()
    print(f"domain adaptation bench -> {out}; {_load()}", flush=True)
    check_settings(out, settings)
    corpus = assemble_corpora(out, settings)
    for name, c in corpus["corpora"].items():
        print(
            f"  {name}: {c['train_documents']:,} training documents ({c['train_words']:,} words), "
            f"{c['heldout_documents']:,} held out ({c['heldout_words']:,} words)",
            flush=True,
        )
    shared_tokenizer(out, settings)
    tokenizers = tokenizer_comparison(out, settings)
    metas = tokenize_all(out, settings)
    ids = heldout_ids(out, settings)
    print(f"corpora, tokenizers and token directories ready ({time.perf_counter() - started:.0f} s)", flush=True)

    jobs = plan_jobs(settings)
    cfg = model_config(settings, out / "data" / "general")
    torch.manual_seed(0)
    per_token = flops_per_token(build_model(cfg), cfg, settings.block_size)
    budgets = compute_budgets(jobs, settings, per_token)
    flops = check_equal_compute(budgets)
    tokens = next(iter(budgets.values()))["tokens"]
    print(
        f"model: {cfg.n_layer} layers x {cfg.d_model} wide, vocabulary {cfg.vocab_size}; every run: {tokens:,} "
        f"tokens x {per_token / 1e6:.2f} MFLOPs per token = {flops:.3e} FLOPs",
        flush=True,
    )
    results = run_jobs(out, jobs, settings, ids)

    cells = table_cells(results)
    found = expectation(cells)
    table, expected = render_table(cells), render_expectation(found)
    print("\nheld-out perplexity (mean ± half the range over seeds " + ", ".join(map(str, settings.seeds)) + ")")
    print(table)
    print("\nthe expectation, measured (gap closed: in log perplexity between the two specialists)")
    print(expected)
    print("\ntokens per word of held-out text (BPE tokenizers of equal vocabulary)")
    print(render_tokenizers(tokenizers))
    plot(cells, picture, f"held-out perplexity, {len(settings.seeds)} seeds, {flops:.2e} FLOPs per run")
    elapsed = time.perf_counter() - started
    summary = {
        "settings": dataclasses.asdict(settings),
        "corpus": corpus,
        "tokenizers": tokenizers,
        "data": {
            name: {"train_tokens": m["tokens"]["train"], "shares": [s["train"]["share"] for s in m["sources"]]}
            for name, m in metas.items()
        },
        "model": cfg.to_dict(),
        "flops_per_token": per_token,
        "tokens_per_run": tokens,
        "flops_per_run": flops,
        "results": results,
        "cells": {f"{k}/{d}": v for (k, d), v in cells.items()},
        "expectation": found,
        "seconds": round(elapsed, 1),
        "load_average": os.getloadavg(),
    }
    atomic_write(out / "results.json", json.dumps(summary, indent=2) + "\n")
    atomic_write(out / "table.md", table + "\n\n" + expected + "\n\n" + render_tokenizers(tokenizers) + "\n")
    print(f"\nplot: {picture}; figures: {out / 'results.json'}")
    print(f"elapsed {elapsed / 60:.1f} min; {_load()}")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "domain_adaptation", help="working directory")
    p.add_argument("--quick", action="store_true", help="tiny sizes: the whole path in a few minutes")
    p.add_argument("--workers", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process (default 1)")
    p.add_argument("--plot", type=Path, help="the PNG (default docs/images/domain_adaptation.png; --quick: in OUT)")
    p.add_argument("--real", action="store_true", help="only the real-model part: SmolLM2 continued on medical text")
    p.add_argument(
        "--model",
        type=Path,
        default=ROOT / "models" / "smollm2-135m-instruct",
        help="--real: the SmolLM2-135M-Instruct checkpoint (`llmkit models get smollm2-135m-instruct`)",
    )
    p.add_argument("--real-steps", type=int, help=f"--real: training steps (default {RealSettings.steps})")
    args = p.parse_args(argv)
    settings = Settings(**(QUICK if args.quick else {}), workers=args.workers, threads=args.threads)
    out = args.out / "quick" if args.quick else args.out
    try:
        if args.real:
            real = RealSettings(**(REAL_QUICK if args.quick else {}))
            if args.real_steps:
                real.steps = args.real_steps
            print(f"SmolLM2 on medical text -> {out / 'real'}; {_load()}", flush=True)
            report = run_real(out, args.model, real, settings)
            atomic_write(out / "real" / "results.json", json.dumps(report, indent=2) + "\n")
            print(render_real(report))
            print(f"elapsed {report['seconds'] / 60:.1f} min; {_load()}")
            return 0
        picture = args.plot or (
            out / "domain_adaptation.png" if args.quick else ROOT / "docs/images/domain_adaptation.png"
        )
        bench(out, settings, picture)
    except LlmkitError as err:
        print(f"domain_adaptation: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
