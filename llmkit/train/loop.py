"""The training loop that pretraining and fine-tuning share (``Run``), with pretraining's own parts
(``PretrainRun``): evaluation, checkpoints, and the loop that ties them to the step (step.py).

Everything random is a function of the seed and the step: batch ``step * grad_accum + micro`` comes
from ``TokenDataset.batch`` (seeded by seed, split and index), the objective's draws (masking, span
noise) from a generator seeded by (seed, step, micro, rank), and dropout from torch's generator
reseeded by (seed, step, rank) before every step. A resumed run therefore retraces the
uninterrupted one exactly; ``train_state.pt`` needs only the step and the optimizer.
"""

from __future__ import annotations

import io
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from llmkit import checkpoint, files
from llmkit.config import ModelConfig, TrainConfig
from llmkit.data.datasets import TokenDataset
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.model_card import ModelCard
from llmkit.models import build_model
from llmkit.objectives import IGNORE_INDEX, Batch, Objective, lm_loss, make_objective
from llmkit.train import dcp, distributed, host_memory
from llmkit.train.card import pretrain_card
from llmkit.train.distributed import Dist
from llmkit.train.flops import StepFlops
from llmkit.train.metrics import MetricsLog, loss_title, plot_loss
from llmkit.train.optim import lr_at
from llmkit.train.step import (
    EVAL_SEEDS,
    TRAIN_SEEDS,
    TrainState,
    derive_seed,
    draw_batch,
    make_state,
    measure_peak_flops,
    train_batches,
    train_step,
)

TRAIN_STATE = "train_state.pt"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
# Settings that fix which rows and draws step k sees: a resumed run must keep them.
_DATA_FIELDS = ("seed", "block_size", "grad_accum", "objective", "mlm_probability", "noise_density", "mean_span_length")


# ---- evaluation -----------------------------------------------------------------------------
@torch.no_grad()
def evaluate(state: TrainState, data: TokenDataset, objective: Objective) -> float:
    """Mean validation loss per target token over ``eval_batches`` fixed batches (the same rows and
    draws at every evaluation), summed over processes; the bare model runs in eval mode."""
    cfg, env = state.cfg, state.env
    totals = torch.zeros(2, device=env.device)  # summed loss, target tokens
    state.raw.eval()
    for index in range(cfg.eval_batches):
        seed = derive_seed(cfg.seed, EVAL_SEEDS, index, 0)
        batch = draw_batch(data, objective, "val", index, cfg, env, seed).to(env.device, non_blocking=True)
        with state.autocast:
            logits = state.raw(**batch.inputs).logits
        n = (batch.labels != IGNORE_INDEX).sum()
        totals += torch.stack([lm_loss(logits, batch.labels) * n, n.float()])
    state.raw.train()
    loss_sum, count = distributed.all_reduce_sum(totals).tolist()
    return loss_sum / max(count, 1.0)


def perplexity(loss: float) -> float:
    """exp(loss), inf where it overflows."""
    return math.exp(loss) if loss < 700 else math.inf


# ---- checkpoints ----------------------------------------------------------------------------
def save_checkpoint(
    state: TrainState, out_dir: Path, tokenizer: Tokenizer, extra: dict[str, Any], card: ModelCard | None = None
) -> None:
    """Atomically replace ``out_dir`` with the model (llmkit checkpoint with the data's tokenizer and
    model card), its ``train_state.pt`` and the run's metrics and plot so far. Rank 0 writes; everyone waits.
    A sharded (FSDP) run writes a distributed checkpoint instead (``dcp.save``): every process its shards
    of the weights and of the optimizer, rank 0 the rest."""
    if distributed.is_sharded(state.raw):
        payload = {"step": state.step, "train_config": state.cfg.to_dict(), "world_size": state.env.world_size, **extra}
        carried = {name: (out_dir / name).read_bytes() for name in (METRICS, LOSS_PLOT) if (out_dir / name).is_file()}
        dcp.save(state, out_dir, train_state=payload, tokenizer=tokenizer, extra_files=carried, card=card)
        return
    if state.env.is_main:
        payload = {
            "step": state.step,
            "optimizer": state.optimizer.state_dict(),
            "train_config": state.cfg.to_dict(),
            "world_size": state.env.world_size,
            **extra,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        extra_files = {TRAIN_STATE: buffer.getvalue()}
        for name in (METRICS, LOSS_PLOT):  # the directory is replaced whole: carry the run's own files
            if (out_dir / name).is_file():
                extra_files[name] = (out_dir / name).read_bytes()
        checkpoint.save(state.raw, out_dir, tokenizer=tokenizer, extra_files=extra_files, card=card)
    distributed.barrier()


def load_train_state(out_dir: Path) -> dict[str, Any]:
    """``train_state.pt`` of a run directory, loaded with ``weights_only=True`` (plain data only)."""
    path = out_dir / TRAIN_STATE
    if not path.is_file():
        raise LlmkitError(f"cannot resume: {path} not found", "start without --resume, or point out_dir at a run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle and zip errors come in many types
        raise LlmkitError(f"cannot resume: {path} is unreadable ({err})", "restore the run directory") from None


def check_resumable(saved: dict[str, Any], model_cfg: ModelConfig, cfg: TrainConfig, env: Dist) -> None:
    """A resumed run must build the same model and draw the same data as the one that saved."""
    if saved.get("model_config") != model_cfg.to_dict():
        old, new = saved.get("model_config") or {}, model_cfg.to_dict()
        diff = next((k for k in new if old.get(k) != new[k]), "?")
        raise LlmkitError(
            f"cannot resume: model setting {diff}={new.get(diff)!r} differs from the saved run's {old.get(diff)!r}",
            f"resume with --model.{diff} {old.get(diff)}, or start a new run in another out_dir",
        )
    old_cfg = saved["train_config"]
    was = old_cfg.get("parallel", "ddp")
    if (was == "fsdp") != (cfg.parallel == "fsdp"):  # the checkpoint's format: shards (DCP) or one file
        raise LlmkitError(
            f"cannot resume: the run was saved with parallel={was!r}, this one asks for {cfg.parallel!r}",
            f"resume with --train.parallel {was}"
            + (" (or `llmkit convert --from-dcp` it into a plain checkpoint)" if was == "fsdp" else ""),
        )
    for name in _DATA_FIELDS:
        if old_cfg[name] != getattr(cfg, name):
            raise LlmkitError(
                f"cannot resume: {name}={getattr(cfg, name)!r} differs from the saved run's {old_cfg[name]!r}",
                f"resume with --train.{name} {old_cfg[name]}: it decides which data each step sees",
            )
    rows, old_rows = cfg.batch_size * env.world_size, old_cfg["batch_size"] * saved["world_size"]
    if rows != old_rows:
        raise LlmkitError(
            f"cannot resume: {rows} rows per micro-batch over all processes, the saved run had {old_rows}",
            "keep batch_size * processes the same",
        )


# ---- the loop -------------------------------------------------------------------------------
def pretrain(
    model_cfg: ModelConfig, train_cfg: TrainConfig, *, resume: bool = False, verify: bool = True
) -> dict[str, Any]:
    """Pretrain a model from scratch (or resume a run in ``train_cfg.out_dir``); returns the summary.

    Order: join the processes (torchrun) -> open the data and its tokenizer -> check sizes -> build the
    model (seeded) or load the saved one -> AdamW -> wrap (DDP) and compile -> validation loss at init
    -> steps, logging every ``log_interval``, evaluating every ``eval_interval`` and saving every
    ``save_interval`` (and all three at the end) -> loss plot -> summary. A nan/inf loss stops the run
    with an ``LlmkitError`` and leaves the last checkpoint as it was.

    ``resume`` first recovers a save that a crash interrupted between its renames (the newest
    complete copy left beside out_dir), then checks the checkpoint's manifest (unless ``verify`` is
    False) and that its weights are finite.
    """
    env = distributed.init(train_cfg.device)
    try:
        return PretrainRun(model_cfg, train_cfg, env, resume, verify).train()
    finally:
        distributed.cleanup()


class Run:
    """One training run's state between steps; ``train()`` is the loop that pretraining and
    fine-tuning share (one loop: autocast, accumulation, schedule, logging, evaluation, checkpoints,
    exact resume, NaN stop, DDP).

    Constructing a run keeps its settings; ``start()`` (the first thing ``train()`` does, if not done
    yet) builds it: ``setup()`` -> the out dir (checked, or the saved run recovered and checked; a
    run stopped before its first checkpoint starts over, with a notice) ->
    the model (``initial_model()``, or ``adapt()`` + the saved weights) -> the optimizer. A subclass
    supplies what differs through these public hooks (and overrides nothing else):

    - ``setup() -> ModelConfig``: open the data and its tokenizer (``self.tokenizer``), check sizes,
      and return the config of the model to build;
    - ``initial_model()``: the model a new run starts from (seeded);
    - ``adapt(model)``: ready a built model for training (freezing, adapters) before a resumed run's
      saved weights are loaded into it (default: as it is);
    - ``batches(step)``: this process's micro-batches of optimizer step ``step``, a function of
      (seed, step, rank) so a resumed run draws the same ones;
    - ``step_tokens(batches)``: the step's input tokens over all processes (tokens/s, MFU);
    - ``evaluate()``: the dev metrics, a dict with at least ``val_loss``;
    - ``save_best()``: keep the model of the best evaluation so far (default: a plain checkpoint
      in ``best_dir`` with ``best.json``);
    - ``card()``, ``check_resumable(saved)``, ``save_extra()`` and ``report(summary, start)``: the
      model card, the resume check, what train_state.pt keeps besides the loop's state, the closing line;
    - ``start_files()``: what the run writes before its first checkpoint (default: its log and plot),
      all a run killed at that point leaves: a new start, with or without ``--resume``, clears them.

    A hook that writes the model as single files (``save_best``) takes it from ``whole_model()``: the
    bare model, or a sharded (FSDP) run's weights gathered whole on rank 0.

    ``best_metric`` (a key of ``evaluate()``'s dict; higher is better unless ``best_lower``) makes
    every evaluation that improves on the best so far call ``save_best()``.
    """

    kind = "train"
    best_metric: str | None = None
    best_lower = False
    best_dir: Path | None = None
    packed: tuple[int, int] | None = None  # (examples, windows) when the rows are windows packed from examples

    def __init__(
        self, model_cfg: ModelConfig | None, cfg: TrainConfig, env: Dist, resume: bool, verify: bool = True
    ) -> None:
        """``model_cfg``: the model to build, or None where ``setup()`` makes it (fine-tuning: init_from's
        config with the task's head). ``resume`` continues the run saved in ``cfg.out_dir`` (its
        manifest checked unless ``verify`` is False)."""
        self.model_cfg, self.cfg, self.env = model_cfg, cfg, env
        self.resume, self.verify = resume, verify
        self.out = Path(cfg.out_dir)  # the checkpoint of the run, with train_state.pt
        self.root = self.out  # the directory the user named (fine-tuning keeps its checkpoint in ROOT/last)
        self.state: TrainState | None = None  # built by start()

    def start(self) -> None:
        """Build the run: setup, the out dir, the model (new or saved), the optimizer and the log."""
        cfg, env = self.cfg, self.env
        self.model_cfg = self.setup()
        saved = self._open_out_dir(self.resume, self.verify)
        # every process has looked at out_dir before rank 0 writes into it (its log, below): DDP's
        # construction synchronized them here, FSDP's sharding does not, and a process that found rank 0's
        # fresh log would take the run for an unfinished one and wait in _start_over's barrier forever
        distributed.barrier()
        sharded = saved is not None and dcp.is_dcp(self.out)
        model = self.initial_model() if saved is None else self._saved_model(weights=not sharded)
        self.state = make_state(model, cfg, env)
        if saved is not None:
            if sharded:  # weights and optimizer from every process's slices of the distributed checkpoint
                dcp.load(self.state, self.out)
            else:
                self.state.optimizer.load_state_dict(saved["optimizer"])
            self.state.step = saved["step"]
        self.saved = saved or {}
        self.best = self.saved.get("best")  # the best dev score so far (None: none yet)
        self.metrics = MetricsLog(self.out / METRICS) if env.is_main else None
        if self.metrics is not None:
            self.metrics.keep_until(self.state.step)
        self.rows = cfg.batch_size * cfg.grad_accum * env.world_size  # rows per optimizer step
        self.last_train: float | None = None  # the latest logged losses (None until the first log / evaluation)
        self.last_val: float | None = None
        self.last_eval: dict[str, float] = {}
        self.step_flops = StepFlops(self.state.raw)  # what the steps run: MFU's numerator
        dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
        self.peak = measure_peak_flops(env.device, dtype)

    # ---- hooks ----
    def setup(self) -> ModelConfig:
        raise NotImplementedError

    def initial_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def adapt(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def batches(self, step: int) -> list[Batch]:
        raise NotImplementedError

    def step_tokens(self, batches: list[Batch]) -> int | torch.Tensor:
        """Input tokens of one optimizer step over all processes, for tokens/s and MFU: every row is
        a full ``block_size`` window in pretraining; fine-tuning counts real tokens, not padding."""
        return self.rows * self.cfg.block_size

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def save_best(self) -> None:
        """The model as it is to ``best_dir``, with its scores in best.json (rank 0 writes; all wait)."""
        model = self.whole_model()
        if self.env.is_main:
            card = self.card()
            checkpoint.save(model, self.best_dir, tokenizer=self.tokenizer, card=card,
                            extra_files={"best.json": {"step": self.state.step, **self.last_eval}})  # fmt: skip
        distributed.barrier()

    def whole_model(self) -> torch.nn.Module | None:
        """The model with whole weights, for single-file saves (the best model, an adapter): the bare model,
        or for a sharded run a copy that rank 0 builds (``adapt`` included) from the gathered shards (None
        on the other processes). Every process calls it."""
        raw = self.state.raw
        if not distributed.is_sharded(raw):
            return raw
        weights = dcp.full_state_dict(raw)
        if not self.env.is_main:
            return None
        model = self.adapt(build_model(self.model_cfg, init=False))
        model.load_state_dict(weights)
        return model.train(raw.training)

    def card(self) -> ModelCard | None:
        return None

    def check_resumable(self, saved: dict[str, Any]) -> None:
        check_resumable(saved, self.model_cfg, self.cfg, self.env)

    def save_extra(self) -> dict[str, Any]:
        """What train_state.pt keeps besides step, optimizer and settings."""
        return {}

    # ---- setup ----
    def _saved_model(self, weights: bool = True) -> torch.nn.Module:
        """The saved run's model: built and adapted, then its weights loaded (``weights``; a distributed
        checkpoint's are loaded into the sharded model later)."""
        torch.manual_seed(self.cfg.seed)
        model = self.adapt(build_model(self.model_cfg, init=False))
        if not weights:
            return model
        weights = checkpoint.read_weights(self.out / checkpoint.WEIGHTS)
        checkpoint.load_state_dict_checked(model, weights, str(self.out / checkpoint.WEIGHTS))
        checkpoint.check_finite(model, str(self.out / checkpoint.WEIGHTS))
        return model

    def _open_out_dir(self, resume: bool, verify: bool) -> dict[str, Any] | None:
        """The saved run to continue (``resume``), or None for a new one. A run killed before its first
        checkpoint left only the files of its start (``start_files``): it has nothing to resume, so
        under ``resume`` it starts over with a notice, and a new start may clear them too."""
        if resume:
            if self.env.is_main:  # one process moves directories; the others wait for it
                checkpoint.recover(self.out)
            distributed.barrier()
            if not (self.out / TRAIN_STATE).exists():
                self._start_over(f"nothing to resume in {self.root} (no checkpoint was saved yet)", "--resume")
                return None
            if verify:
                checkpoint.verify_manifest(self.out, skip=(METRICS, LOSS_PLOT))  # the log grows after a save
            saved = load_train_state(self.out)
            self.check_resumable(saved)
            if saved["step"] >= self.cfg.steps:
                raise LlmkitError(
                    f"the run in {self.out} already finished {saved['step']} steps", "raise --train.steps to go on"
                )
            return saved
        if not self.out.exists() and files.leftovers(self.out):
            raise LlmkitError(
                f"a save of the run in {self.out} was interrupted; its copies are beside it",
                "pass --resume to recover and continue it, or choose another --train.out_dir",
            )
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):  # empty: a new run
            self._start_over(f"{self.root} holds a run stopped before its first checkpoint", "out_dir")
        return None

    def start_files(self) -> list[Path]:
        """What a run writes before its first checkpoint (its log, a plot; fine-tuning's best model of
        step 0), under ``self.root``: all a run killed at that point leaves behind."""
        return [self.out / METRICS, self.out / LOSS_PLOT]

    def _start_over(self, why: str, where: str) -> None:
        """Clear an unfinished run's start files (and its interrupted saves) and say so in one line; refuse
        when ``self.root`` holds anything else (a checkpoint, another run, the user's own files)."""
        if self.root.exists() and not self.root.is_dir():
            raise LlmkitError(f"out_dir {self.root} is not a directory", "choose another --train.out_dir")
        written = self.start_files()
        written += _leftovers_of([*written, self.out])  # interrupted saves of those and of the checkpoint
        others = _other_files(self.root, written) if self.root.exists() else []
        if (self.out / TRAIN_STATE).exists():  # a saved run (only a plain start gets here with one)
            raise LlmkitError(
                f"out_dir {self.root} already exists and is not empty",
                "pass --resume to continue the run in it, or choose another --train.out_dir",
            )
        if others:
            if where == "--resume":
                what = f"cannot resume: {self.root} has no checkpoint to resume"
            else:
                what = f"out_dir {self.root} already exists and is not empty"
            raise LlmkitError(
                f"{what}: it holds {others[0]}, which no llmkit run writes before its first checkpoint",
                "choose another --train.out_dir, or move those files away",
            )
        distributed.barrier()  # every process has looked before one of them removes anything
        if self.env.is_main:
            for path in written:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            print(f"{self.kind}: {why}; starting the run from step 0", file=sys.stderr, flush=True)
        distributed.barrier()

    # ---- the loop ----
    def train(self) -> dict[str, Any]:
        from tqdm import tqdm

        if self.state is None:
            self.start()
        cfg, state = self.cfg, self.state
        start = state.step
        bar = tqdm(total=cfg.steps, initial=start, desc=self.kind, unit="step", disable=not self.env.is_main)
        self.init_val = self._log_eval(bar) if start == 0 else self.saved.get("init_val_loss")
        self.pending: list[torch.Tensor] = []  # losses of steps not yet logged, still on the device
        self.pending_tokens = 0  # input tokens of those steps (all processes)
        self.tokens_seen = self.saved.get("tokens_seen", start * self.rows * cfg.block_size)
        self.tokens_at_start = self.tokens_seen
        self.flops_done = 0  # this process's training FLOPs in this run
        self.train_seconds = self.saved.get("train_seconds", 0.0)
        self.tick = time.perf_counter()
        # CPU steps reuse their freed memory instead of page-faulting it in anew (train/host_memory.py)
        try:
            with host_memory.keep_freed_memory(self.env.device.type == "cpu"):
                for step in range(start, cfg.steps):
                    torch.manual_seed(derive_seed(cfg.seed, TRAIN_SEEDS, step, self.env.rank))  # dropout
                    batches = self.batches(step)
                    self.pending_tokens += self.step_tokens(batches)
                    self.pending.append(train_step(state, batches))
                    bar.update(1)
                    done = state.step
                    at_end = done == cfg.steps
                    save = done % cfg.save_interval == 0 or at_end
                    evaluate = done % cfg.eval_interval == 0 or at_end
                    if done % cfg.log_interval == 0 or save or evaluate:
                        self._log(bar)
                    if evaluate:
                        self._log_eval(bar)
                    if save:
                        self._save()
        finally:
            bar.close()
        return self._summary(start)

    def _log(self, bar) -> None:
        """Bring the pending losses to the host (the only sync), stop on nan/inf, log the mean."""
        losses = distributed.all_reduce_sum(torch.stack(self.pending)).tolist()
        first = self.state.step - len(losses)
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                self._diverged(f"the training loss became {loss} at step {first + offset + 1}")
        now = time.perf_counter()
        seconds = now - self.tick
        self.train_seconds += seconds
        self.tick = now
        tokens = int(self.pending_tokens)  # a device tensor in fine-tuning: brought over with the losses
        tokens_per_s = tokens / seconds
        self.tokens_seen += tokens
        self.pending_tokens = 0
        flops = self.step_flops.take()
        self.flops_done += flops
        mfu = flops / seconds / self.peak  # each process against its own device's peak
        record = {
            "step": self.state.step,
            "train_loss": sum(losses) / len(losses),
            "lr": lr_at(self.state.step - 1, self.cfg),
            "tokens": self.tokens_seen,
            "tokens_per_s": tokens_per_s,
            "examples_per_s": len(losses) * self.rows / seconds,
            "mfu": mfu,
            "flops": _sum_over_processes(flops, self.env),  # of the steps since the last record: summed, the run's C
        }
        self.pending = []
        self.last_train = record["train_loss"]
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", lr=f"{record['lr']:.2e}",
                        tok_s=f"{tokens_per_s:,.0f}", mfu=f"{mfu:.1%}")  # fmt: skip
        if self.metrics is not None:
            self.metrics.write(record)

    def _log_eval(self, bar) -> float:
        step, scores = self.state.step, self.evaluate()
        loss = scores["val_loss"]
        if not math.isfinite(loss):
            self._diverged(f"the validation loss became {loss} at step {step}")
        when = f"step {step}" + (" (init)" if step == 0 else "")
        if self.env.is_main:
            bar.write(f"{when}: " + ", ".join(f"{_label(k)} {_figure(k, v)}" for k, v in scores.items()))
        if self.metrics is not None:
            self.metrics.write({"step": step, **scores})
        self.last_val, self.last_eval = loss, scores
        if self.best_metric is not None and _better(scores[self.best_metric], self.best, self.best_lower):
            self.best = scores[self.best_metric]
            self.save_best()
        self.tick = time.perf_counter()  # evaluation time is not training time
        return loss

    def _save(self) -> None:
        if self.metrics is not None:
            tokens = self.tokens_seen
            params = sum(p.numel() for p in self.state.raw.parameters())  # tied weights once
            title = loss_title(self.model_cfg.name or self.model_cfg.family, params, tokens)
            plot_loss(self.metrics.records, self.out / LOSS_PLOT, title)
        extra = {"model_config": self.model_cfg.to_dict(), "train_seconds": self.train_seconds}
        extra["tokens_seen"] = self.tokens_seen
        extra["init_val_loss"] = self.init_val
        extra["best"] = self.best
        extra.update(self.save_extra())
        save_checkpoint(self.state, self.out, self.tokenizer, extra, self.card())
        self.tick = time.perf_counter()

    def _diverged(self, what: str) -> None:
        last = _saved_step(self.out)
        kept = f"the checkpoint of step {last} in {self.out} is kept" if last else "no checkpoint was saved"
        raise LlmkitError(
            f"{what}; training stopped, {kept}",
            "lower --train.lr, train in fp32 (--train.dtype fp32), or clip gradients (--train.grad_clip 1.0)",
        )

    def _summary(self, start: int) -> dict[str, Any]:
        cfg = self.cfg
        steps = cfg.steps - start
        tokens = self.tokens_seen - self.tokens_at_start
        seconds = max(self.train_seconds - self.saved.get("train_seconds", 0.0), 1e-9)
        init_val = self.init_val
        summary = {
            "steps": cfg.steps,
            "steps_this_run": steps,
            "tokens": tokens,
            "examples": steps * self.rows,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "examples_per_s": steps * self.rows / seconds,
            "mfu": self.flops_done / seconds / self.peak,
            "flops": _sum_over_processes(self.flops_done, self.env),  # this run's training FLOPs, all processes
            "train_loss": self.last_train,
            "train_ppl": perplexity(self.last_train),
            "val_loss": self.last_val,
            "val_ppl": perplexity(self.last_val),
            "init_val_loss": init_val,
            "init_val_ppl": None if init_val is None else perplexity(init_val),
            "out_dir": str(self.out),
            "eval": dict(self.last_eval),
            "best": self.best,
        }
        self.report(summary, start)
        return summary

    def report(self, summary: dict[str, Any], start: int) -> None:
        """The run's closing line (rank 0)."""
        examples = f"{summary['examples']:,} examples"
        if self.packed is not None:  # rows are windows cut from concatenated examples: say both
            items, windows = self.packed
            epochs = summary["examples"] / windows
            examples = (
                f"{summary['examples']:,} windows (~{epochs * items:,.0f} of {items:,} examples, {epochs:.2f} epochs)"
            )
        distributed.print0(
            f"{self.kind}: {summary['steps_this_run']} steps ({start} -> {self.cfg.steps}), "
            f"{examples} in {summary['seconds']:.1f} s ({summary['examples_per_s']:,.1f}/s); "
            f"train loss {self.last_train:.4f}; "
            + ", ".join(f"{_label(k)} {_figure(k, v)}" for k, v in self.last_eval.items())
            + f" -> {self.out}"
        )


class PretrainRun(Run):
    """Pretraining from scratch on a tokenized data directory with the model family's objective."""

    kind = "pretrain"

    def setup(self) -> ModelConfig:
        model_cfg, cfg = self.model_cfg, self.cfg
        checkpoint.check_sizes(model_cfg, "the model config")  # before anything is built from it
        if not cfg.data:
            raise LlmkitError("no training data given", "set data in [train] or pass --train.data DIR")
        self.data = TokenDataset(cfg.data)
        self.tokenizer = self.data.tokenizer()  # the one that made the ids: saved with every checkpoint
        self.objective = make_objective(model_cfg, cfg, self.tokenizer)
        _check_shapes(model_cfg, cfg, self.data)
        return model_cfg

    def initial_model(self) -> torch.nn.Module:
        torch.manual_seed(self.cfg.seed)  # the same initial weights on every process
        return build_model(self.model_cfg, init=True)

    def batches(self, step: int) -> list[Batch]:
        return train_batches(self.data, self.objective, self.cfg, self.env, step)

    def evaluate(self) -> dict[str, float]:
        loss = evaluate(self.state, self.data, self.objective)
        return {"val_loss": loss, "val_ppl": perplexity(loss)}

    def card(self) -> ModelCard:
        step = self.state.step
        progress = {
            "step": step,
            "tokens": step * self.rows * self.cfg.block_size,
            "world_size": self.env.world_size,
            "seconds": self.train_seconds,
            "train_loss": self.last_train,
            "val_loss": self.last_val,
            "val_ppl": None if self.last_val is None else perplexity(self.last_val),
            "init_val_loss": self.init_val,
        }
        return pretrain_card(self.model_cfg, self.cfg, self.objective.name, self.data.meta, progress)

    def report(self, summary: dict[str, Any], start: int) -> None:
        init_val, steps = summary["init_val_loss"], summary["steps_this_run"]
        tokens, seconds = summary["tokens"], summary["seconds"]
        distributed.print0(
            f"pretrained {steps} steps ({start} -> {self.cfg.steps}), {tokens:,} tokens in {seconds:.1f} s "
            f"({summary['tokens_per_s']:,.0f} tokens/s, MFU {summary['mfu']:.1%}); "
            f"train loss {self.last_train:.4f} (ppl {summary['train_ppl']:,.2f}), "
            f"val loss {self.last_val:.4f} (ppl {summary['val_ppl']:,.2f})"
            + ("" if init_val is None else f", at init {init_val:.4f} (ppl {perplexity(init_val):,.1f})")
            + f" -> {self.out}"
        )


def _sum_over_processes(count: int, env: Dist) -> int:
    """An exact integer count summed over processes (int64: a float32 would round FLOP counts)."""
    if not env.is_distributed:
        return count
    return int(distributed.all_reduce_sum(torch.tensor(count, dtype=torch.int64, device=env.device)).item())


def _better(score: float, best: float | None, lower: bool) -> bool:
    return best is None or (score < best if lower else score > best)


def _label(key: str) -> str:
    return {"val_loss": "val loss", "val_ppl": "perplexity"}.get(key, key.removeprefix("val_").replace("_", " "))


def _figure(key: str, value: float) -> str:
    """Losses and scores to 4 decimals, perplexity as pretraining always printed it (2, with thousands)."""
    return f"{value:,.2f}" if key == "val_ppl" else f"{value:.4f}"


def _saved_step(out: Path) -> int | None:
    try:
        return int(load_train_state(out)["step"])
    except LlmkitError:
        return None


def _leftovers_of(paths: list[Path]) -> list[Path]:
    """What interrupted atomic writes of ``paths`` (files or checkpoint directories) left beside them."""
    found = [p for path in paths for p in files.leftovers(path)]
    return found + [p for path in paths if path.parent.is_dir() for p in path.parent.glob(f".{path.name}.*.tmp")]


def _other_files(root: Path, written: list[Path]) -> list[Path]:
    """Entries under ``root`` that are neither one of ``written``, nor a folder on the way to one, nor
    the leftover of an interrupted write of one."""
    allowed = set(written)
    folders = {parent for path in written for parent in path.parents}
    others = []
    for entry in sorted(root.iterdir()):
        if entry in allowed:
            continue
        if entry in folders and entry.is_dir():
            others += _other_files(entry, written)
        else:
            others.append(entry)
    return others


def _check_shapes(model_cfg: ModelConfig, cfg: TrainConfig, data: TokenDataset) -> None:
    if data.vocab_size > model_cfg.vocab_size:
        raise LlmkitError(
            f"the data's tokenizer has {data.vocab_size} ids but the model's vocabulary only {model_cfg.vocab_size}",
            f"set --model.vocab_size {data.vocab_size} (llmkit pretrain does it unless vocab_size is given)",
        )
    if cfg.block_size > model_cfg.max_seq_len:
        raise LlmkitError(
            f"block_size={cfg.block_size} is longer than the model's context window "
            f"max_seq_len={model_cfg.max_seq_len}",
            "lower --train.block_size or raise --model.max_seq_len",
        )
