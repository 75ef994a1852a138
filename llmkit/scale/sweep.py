"""`llmkit scale sweep`: run the IsoFLOP grid (grid.py) as ordinary pretraining runs, resumably.

Each point is a normal llmkit run directory (``PretrainRun``: checkpoint, model card, train_state.pt,
metrics.jsonl) in OUT/runs/POINT; when it finishes, one line goes to OUT/results.jsonl (atomically).
Run the same command again after a kill: finished points (in results.jsonl, or finished on disk) are
not trained again, an unfinished one resumes from its last checkpoint exactly as `llmkit pretrain
--resume` would, and one killed before its first checkpoint starts over. OUT/sweep.json keeps the
base settings; a rerun with other ones is refused (budgets and widths may be added).

Parallel: ``workers`` > 1 runs points in that many processes (spawned), each with ``threads`` torch
threads and its output in OUT/logs/POINT.log; the parent writes the results. Under torchrun every
process runs every point together (DistributedDataParallel inside each run; the global batch is
batch_size x grad_accum x processes, and the steps are counted from it), rank 0 writes the results:
the same loop `llmkit pretrain` runs under torchrun, so no second way of sharing work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit import checkpoint
from llmkit.config import ModelConfig, TrainConfig
from llmkit.errors import LlmkitError
from llmkit.files import atomic_write
from llmkit.plan.report import sci
from llmkit.runconfig import read_run_tables, run_config_from_tables
from llmkit.scale.grid import SWEEP_OWNED, Point, SweepConfig, plan_points
from llmkit.scale.results import Result, append_result, read_results
from llmkit.train import distributed
from llmkit.train.distributed import Dist
from llmkit.train.loop import METRICS, TRAIN_STATE, PretrainRun, load_train_state
from llmkit.train.metrics import MetricsLog
from llmkit.units import human_count

SETTINGS, RESULTS, RUNS, LOGS = "sweep.json", "results.jsonl", "runs", "logs"
TABLES = ("model", "train", "sweep")
GROWABLE = ("budgets", "widths", "layers", "out_dir")  # [sweep] keys a rerun may change (new points only)


# ---- the config -----------------------------------------------------------------------------
def load_sweep_config(
    path: str | os.PathLike, model_flags: dict[str, Any] | None = None, train_flags: dict[str, Any] | None = None
) -> tuple[ModelConfig, TrainConfig, SweepConfig]:
    """The base model, the base run settings and the [sweep] table of a sweep config (TOML).
    [model] and [train] read as `llmkit pretrain --config` reads them; the settings the sweep decides
    per point (out_dir, steps, warmup_steps, eval_interval) may not be given."""
    tables = read_run_tables(path, TABLES)
    owned = [k for k in SWEEP_OWNED if k in tables.get("train", {}) or k in (train_flags or {})]
    if owned:
        raise LlmkitError(
            f"{path} [train]: {', '.join(owned)} {'is' if len(owned) == 1 else 'are'} set by the sweep for each point",
            "remove it; [sweep] out_dir names the sweep's directory, warmup_fraction the warmup",
        )
    model, train = run_config_from_tables(tables, path, model_flags, train_flags)
    return model, train, SweepConfig.from_dict(dict(tables.get("sweep", {})))


def check_settings(root: Path, model: ModelConfig, train: TrainConfig, sweep: SweepConfig, write: bool = True) -> None:
    """Refuse when OUT/sweep.json was written for other base settings (the points already run would not
    be comparable with new ones); else write it (unless ``write`` is False)."""
    now = _settings(model, train, sweep)
    path = root / SETTINGS
    if path.is_file():
        before = json.loads(path.read_text())
        # a sweep.json from before a [sweep] rule existed ran with that rule's default (off)
        before["sweep"] = {**_sweep_defaults(), **before.get("sweep", {})}
        for table in ("model", "train", "sweep"):
            old, new = before.get(table, {}), now[table]
            diff = next((k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)), None)
            if diff is not None:
                raise LlmkitError(
                    f"the sweep in {root} was run with {table} {diff}={old.get(diff)!r}, "
                    f"this config has {new.get(diff)!r}",
                    "restore that setting, or give [sweep] out_dir another directory",
                )
    if write:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(now, indent=2) + "\n")


def _sweep_defaults() -> dict[str, Any]:
    fields = dataclasses.fields(SweepConfig)
    return {f.name: f.default for f in fields if f.name not in GROWABLE and f.default is not dataclasses.MISSING}


def _settings(model: ModelConfig, train: TrainConfig, sweep: SweepConfig) -> dict[str, Any]:
    keep = {k: v for k, v in sweep.to_dict().items() if k not in GROWABLE}
    return {
        "model": {k: v for k, v in model.to_dict().items() if k != "name"},
        "train": {k: v for k, v in train.to_dict().items() if k not in SWEEP_OWNED and k != "device"},
        "sweep": keep,
    }


# ---- one point ------------------------------------------------------------------------------
def run_point(point: Point, env: Dist) -> Result | None:
    """Train ``point`` to its last step (fresh, or resumed from its checkpoint) unless it is finished,
    then read its result from the run directory (rank 0; None on the other processes)."""
    out = Path(point.train.out_dir)
    if env.is_main:
        _prepare(out)
    distributed.barrier()
    saved = _saved_step(out)
    if saved is None or saved < point.train.steps:
        try:
            run = PretrainRun(point.model, point.train, env, resume=saved is not None)
            run.start()  # the out dir's checks: their errors get the hint below
        except LlmkitError as err:
            raise LlmkitError(err.message, f"{err.hint}; or delete {out} to train the point again") from None
        run.train()
    return collect(point, out) if env.is_main else None


def _prepare(out: Path) -> None:
    """Put back a checkpoint a kill interrupted mid-save; remove a run killed before its first save
    (its directory holds a metrics.jsonl and no train_state.pt), so it starts over."""
    if not out.exists():
        checkpoint.recover(out)
    if out.exists() and not (out / TRAIN_STATE).is_file():
        shutil.rmtree(out)


def _saved_step(out: Path) -> int | None:
    return int(load_train_state(out)["step"]) if (out / TRAIN_STATE).is_file() else None


def collect(point: Point, out: Path) -> Result:
    """The finished run's result: its final validation loss, from metrics.jsonl; seconds of training
    and tokens from train_state.pt; the FLOPs its own log counted (summed over its records)."""
    records = MetricsLog(out / METRICS).records
    final = [r for r in records if "val_loss" in r and r["step"] == point.train.steps]
    if not final:
        raise LlmkitError(f"{out} has no final validation loss in {METRICS}", f"delete {out} to train the point again")
    trained = [r for r in records if "train_loss" in r]
    saved = load_train_state(out)
    m = point.model
    extra = {
        "n_layer": m.n_layer, "d_model": m.d_model, "n_head": m.n_head, "n_kv_head": m.n_kv_head, "d_ff": m.d_ff,
        "params_total": point.params_total, "flops_per_token": point.flops_per_token,
        "flops_logged": sum(r.get("flops", 0) for r in trained), "tokens_seen": saved.get("tokens_seen"),
        "steps": point.train.steps, "warmup_steps": point.train.warmup_steps, "batch_size": point.train.batch_size,
        "lr": point.train.lr,
        "tokens_per_param": point.tokens / point.params, "train_loss": trained[-1]["train_loss"] if trained else None,
        "seconds": saved.get("train_seconds"), "run_dir": str(Path(RUNS) / out.name),
    }  # fmt: skip
    return Result(point.name, point.budget, point.params, point.tokens, point.flops, final[-1]["val_loss"], extra)


# ---- progress -------------------------------------------------------------------------------
@dataclass
class Progress:
    """FLOPs done against the sweep's total; the ETA is the FLOPs left at this invocation's rate so far."""

    total_flops: float
    done_flops: float  # finished before this invocation
    points: int
    points_done: int
    start: float = field(default_factory=time.perf_counter)
    flops_now: float = 0.0

    def finished(self, result: Result) -> str:
        self.flops_now += result.flops
        self.points_done += 1
        elapsed = time.perf_counter() - self.start
        done = self.done_flops + self.flops_now
        eta = eta_seconds(self.total_flops - done, self.flops_now, elapsed)
        return (
            f"[{self.points_done}/{self.points}] {result.name}: N {human_count(result.params)}, "
            f"D {human_count(result.tokens)}, C {sci(result.flops)}: val loss {result.val_loss:.4f} "
            f"({result.extra.get('seconds') or 0:.0f} s); {done / self.total_flops:.0%} of the FLOPs done"
            + (f", ETA {_duration(eta)}" if eta is not None else "")
        )


def eta_seconds(flops_left: float, flops_done: float, elapsed: float) -> float | None:
    """Seconds left at the rate so far (FLOPs done / seconds); None before anything is done."""
    if flops_done <= 0 or elapsed <= 0:
        return None
    return max(flops_left, 0.0) / (flops_done / elapsed)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# ---- the sweep ------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    points: list[Point]
    results: list[Result]  # every result in results.jsonl after the sweep
    ran: int  # points trained (or finished) by this invocation
    failed: list[str]  # "POINT: error" of points that stopped with an error


def run_sweep(
    model: ModelConfig,
    train: TrainConfig,
    sweep: SweepConfig,
    *,
    workers: int = 1,
    threads: int | None = None,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run the grid's unfinished points. Order: plan the points -> skip those in results.jsonl ->
    print the plan -> (unless ``dry_run``) check/write sweep.json -> run the rest smallest budget first,
    in this process (under torchrun: all processes together) or in ``workers`` spawned processes of
    ``threads`` threads each -> append each result to results.jsonl as it finishes, with progress and
    ETA -> an LlmkitError at the end if any point failed (the others are kept)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if workers < 1:
        raise LlmkitError(f"--workers {workers} must be >= 1", "e.g. --workers 2")
    if workers > 1 and world > 1:
        raise LlmkitError(
            "--workers runs its own processes; under torchrun the processes share each point", "drop --workers"
        )
    points, notes = plan_points(model, train, sweep, world)
    root = Path(sweep.out_dir)
    main = os.environ.get("RANK", "0") == "0"
    say = echo if main else (lambda line: None)
    done = {r.name for r in read_results(root / RESULTS, allow_missing=True)}
    todo = [p for p in points if p.name not in done]
    if main:
        check_settings(root, model, train, sweep, write=not dry_run and bool(todo))
    for line in describe(points, done, notes, workers, threads, world):
        say(line)
    if dry_run or not todo:
        return SweepOutcome(points, read_results(root / RESULTS, allow_missing=True), 0, [])
    progress = Progress(
        sum(p.flops for p in points), sum(p.flops for p in points if p.name in done), len(points), len(done)
    )
    failed: list[str] = []

    def finished(point: Point, result: Result | None, error: str | None) -> None:
        if error is not None:
            failed.append(f"{point.name}: {error}")
            say(f"{point.name} failed: {error}")
        elif result is not None:
            append_result(root / RESULTS, result)
            say(progress.finished(result))

    if workers == 1:
        _run_here(todo, train.device, finished)
    else:
        _run_in_workers(todo, workers, threads or 1, root / LOGS, finished, say)
    if failed:
        raise LlmkitError(
            f"{len(failed)} of {len(todo)} points failed; first: {failed[0]}",
            f"see {root / LOGS} (with --workers) or the output above; run the sweep again to retry them",
        )
    results = read_results(root / RESULTS, allow_missing=True)
    say(f"sweep done: {len(results)} results in {root / RESULTS}; fit them with llmkit scale fit {root / RESULTS}")
    return SweepOutcome(points, results, len(todo), failed)


def describe(
    points: list[Point], done: set[str], notes: list[str], workers: int, threads: int | None, world: int
) -> list[str]:
    """The plan: one line per point (budget, shape, N, D, steps, batch, lr, tokens per parameter, state)
    and a total."""
    budgets = sorted({p.budget for p in points})
    left = [p for p in points if p.name not in done]
    how = f"{world} processes (torchrun)" if world > 1 else f"{workers} worker{'s' * (workers > 1)}"
    if threads:
        how += f" x {threads} thread{'s' * (threads > 1)}"
    lines = [
        f"sweep: {len(points)} points ({len(budgets)} budgets), {len(points) - len(left)} done, {len(left)} to run "
        f"({sci(sum(p.flops for p in left))} of {sci(sum(p.flops for p in points))} FLOPs); {how}",
        f"  {'point':<24}{'N':>9}{'D':>9}{'steps':>8}{'batch':>6}{'lr':>9}{'D/N':>8}  state",
    ]
    for p in points:
        state = "done" if p.name in done else ("resume" if (Path(p.train.out_dir) / TRAIN_STATE).is_file() else "new")
        lines.append(
            f"  {p.name:<24}{human_count(p.params):>9}{human_count(p.tokens):>9}{p.train.steps:>8}"
            f"{p.train.batch_size:>6}{p.train.lr:>9.2e}{p.tokens / p.params:>8.3g}  {state}"
        )
    return lines + [f"  {note}" for note in notes]


def _run_here(todo: list[Point], device: str, finished) -> None:
    """Every point in this process (all processes together under torchrun), in order."""
    env = distributed.init(device)
    try:
        for point in todo:
            try:
                result = run_point(point, env)
            except LlmkitError as err:
                finished(point, None, str(err))
                continue
            finished(point, result, None)
    finally:
        distributed.cleanup()


def _run_in_workers(todo: list[Point], workers: int, threads: int, logs: Path, finished, say) -> None:
    """The points in ``workers`` spawned processes; results come back to this one, which writes them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    logs.mkdir(parents=True, exist_ok=True)
    say(f"each worker's output goes to {logs}/POINT.log")
    context = multiprocessing.get_context("spawn")  # torch and its thread pools do not survive fork
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(_worker, p, str(logs / f"{p.name}.log"), threads): p for p in todo}
        try:
            for future in as_completed(futures):
                outcome = future.result()
                point = futures[future]
                if "error" in outcome:
                    finished(point, None, outcome["error"])
                else:
                    finished(point, Result.from_dict(outcome, point.name), None)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _worker(point: Point, log: str, threads: int) -> dict[str, Any]:
    """One point in a worker process, its output (stdout and stderr, the training bar) into ``log``."""
    import torch

    torch.set_num_threads(threads)
    with output_to(log):
        env = distributed.init(point.train.device)
        try:
            result = run_point(point, env)
        except LlmkitError as err:
            return {"error": str(err)}
    return result.to_dict()


@contextlib.contextmanager
def output_to(path: str | os.PathLike) -> Iterator[None]:
    """File descriptors 1 and 2 (and Python's streams) into ``path``, appended; restored after."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
