"""`llmkit scale sweep` and `llmkit scale fit`: an IsoFLOP sweep of your own runs and the scaling laws
fitted to it (docs/scaling.md)."""

from __future__ import annotations

import argparse
import json
import sys

from llmkit.cli._options import add_config_flags, add_model_flags, config_overrides, model_overrides, whole_number
from llmkit.config import TrainConfig
from llmkit.errors import LlmkitError

_SWEEP = """\
Train an IsoFLOP grid (Hoffmann et al. 2022, approach 2): for each compute budget C, models of
several sizes N, each for D = C / (FLOPs per token) tokens, FLOPs per token as llmkit's trainer counts
them (6 x matmul weights + PaLM's attention term). Each point is an ordinary `llmkit pretrain` run
(checkpoint, model card, train_state.pt, metrics.jsonl) in OUT/runs/POINT with a cosine schedule as
long as the run (warmup: warmup_fraction of it); its final validation loss, N, D and C go to
OUT/results.jsonl when it finishes.

The config is a TOML file:
  [model]  the base model: preset + fields, as for llmkit pretrain (a decoder)
  [train]  data, batch_size, block_size, lr, min_lr, ... as for llmkit pretrain; not out_dir, steps,
           warmup_steps or eval_interval: the sweep sets them per point
  [sweep]  budgets = [3e13, 1e14, 3e14]   FLOPs
           widths = [64, 96, 128, 160, 192] d_model of each size; depth keeps the base's layers per
                                            width (or layers = [...]), heads keep its head_dim, d_ff
                                            its ratio to d_model
           warmup_fraction = 0.05, min_steps = 20, out_dir = "runs/scale"
           optional rules that keep points on their frontier (docs/scaling.md):
           sizes_per_budget = 5, tokens_per_param = 20  per budget, the 5 widths whose D/N is
                                            nearest 20 (default 0: every width at every budget)
           lr_width_exponent = 1.0          lr and min_lr x (base d_model / width)^1 (muP; default 0)
           target_steps = 200               a shorter point halves its batch until it has 200 steps

Run the same command again after a kill: finished points are skipped, an unfinished one resumes
from its last checkpoint. --workers N trains N points at once in separate processes (the threads
are divided among them; each one's output goes to OUT/logs/POINT.log). Under torchrun the
processes train each point together (DDP), e.g.
  torchrun --nproc-per-node 2 -m llmkit scale sweep --config sweep.toml
"""

_FIT = """\
Fit scaling laws to a sweep's results (OUT/results.jsonl of `llmkit scale sweep`, or any JSON lines
with params, tokens, flops, budget and val_loss):

  approach 2: per budget, a parabola of the loss in ln N; its minimum N*(C) and D*(C); then
              N* ~ C^a and D* ~ C^b by least squares on the logarithms (needs 2+ budgets of 3+ sizes);
  approach 3: L(N, D) = E + A/N^alpha + B/D^beta by the Huber loss (delta 1e-3) of the log loss, L-BFGS
              from a grid of starts (Hoffmann et al. 2022, app. D.2; Besiroglu et al. 2024), with
              bootstrap intervals (resampled points, refitted; --bootstrap N).

Printed beside Chinchilla's published values: the fitted parameters, the compute-optimal N, D and
tokens per parameter for each budget of the sweep (or --budget C), and the loss predicted for any
(N, D) (--predict N,D). --plot DIR writes isoflop.png, optimal.png and frontier.png.
"""

_EPILOG_SWEEP = """\
examples:
  llmkit scale sweep --config sweep.toml --dry-run
  llmkit scale sweep --config sweep.toml --workers 2
"""

_EPILOG_FIT = """\
examples:
  llmkit scale fit runs/scale/results.jsonl --plot runs/scale/plots
  llmkit scale fit runs/scale/results.jsonl --budget 1e16 --predict 5M,100M --json
  llmkit plan --flops 1e16 --law runs/scale/results.jsonl
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scale",
        help="scaling laws from your own runs: an IsoFLOP sweep, the Chinchilla fits",
        description="Scaling laws from your own runs. Run `llmkit scale sweep --help` or `llmkit scale fit --help`.",
    )
    p.set_defaults(handler=lambda args: p.print_help())
    group = p.add_subparsers(dest="scale_command", metavar="COMMAND")
    s = group.add_parser("sweep", help="train an IsoFLOP grid of runs (budgets x model sizes)", description=_SWEEP,
                         epilog=_EPILOG_SWEEP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    s.add_argument("--config", required=True, metavar="FILE.toml", help="[model], [train] and [sweep] tables")
    s.add_argument("--workers", metavar="N", default="1", help="points trained at once, in separate processes")
    s.add_argument("--dry-run", action="store_true", help="print the grid (N, D, steps per point) and stop")
    add_model_flags(s)
    add_config_flags(s, TrainConfig, "train", "train overrides (applied on top of the config file)",
                     "--train.lr 1e-3")  # fmt: skip
    s.set_defaults(handler=run_sweep)
    f = group.add_parser("fit", help="fit approach 2 and approach 3 scaling laws to a sweep's results",
                         description=_FIT, epilog=_EPILOG_FIT,
                         formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    f.add_argument("results", metavar="RESULTS", help="results.jsonl of a sweep")
    f.add_argument("--budget", metavar="C", action="append", default=[],
                   help="FLOPs to give the compute-optimal N and D for (repeatable; default: the "
                   "sweep's budgets)")  # fmt: skip
    f.add_argument("--predict", metavar="N,D", action="append", default=[],
                   help="parameters,tokens whose loss to predict, e.g. 5M,100M (repeatable)")  # fmt: skip
    f.add_argument("--bootstrap", metavar="N", default="100", help="bootstrap resamples for intervals (0: none)")
    f.add_argument("--seed", metavar="S", default="0", help="the bootstrap's random seed")
    f.add_argument("--plot", metavar="DIR", help="write isoflop.png, optimal.png and frontier.png into DIR")
    f.add_argument("--json", action="store_true", help="print JSON instead of text")
    f.set_defaults(handler=run_fit)


def run_sweep(args: argparse.Namespace) -> None:
    import os

    import torch

    from llmkit.scale.sweep import load_sweep_config, run_sweep
    from llmkit.threads import affinity_cpus

    workers = whole_number("--workers", args.workers)
    if workers > 1 and workers > len(affinity_cpus()):
        raise LlmkitError(f"--workers {workers} is more than the {len(affinity_cpus())} cores here", "lower --workers")
    model, train, sweep = load_sweep_config(args.config, model_overrides(args), config_overrides(args, "train"))
    threads = max(1, torch.get_num_threads() // workers)
    if workers > 1:  # the spawned workers start with this environment, before they set their own count
        os.environ["OMP_NUM_THREADS"] = str(threads)
    run_sweep(model, train, sweep, workers=workers, threads=threads, dry_run=args.dry_run)


def run_fit(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from llmkit.scale.report import fit_results, render
    from llmkit.scale.results import read_results

    budgets = [_count("--budget", text) for text in args.budget]
    predict = [_pair(text) for text in args.predict]
    resamples = whole_number("--bootstrap", args.bootstrap, minimum=0)
    results = read_results(args.results)
    with tqdm(total=resamples, desc="bootstrap", unit="fit", disable=resamples == 0, file=sys.stderr) as bar:
        fit = fit_results(
            results, args.results, budgets=budgets, predict=predict, bootstrap=resamples,
            seed=whole_number("--seed", args.seed, minimum=0), progress=lambda done: bar.update(1),
        )  # fmt: skip
    written = []
    if args.plot:
        from llmkit.scale.plots import write_plots

        written = write_plots(fit, args.plot)
    if args.json:
        report = fit.to_dict()
        report["plots"] = [str(path) for path in written]
        print(json.dumps(report, indent=2))
        return
    print(render(fit))
    if written:
        print("pictures: " + ", ".join(str(path) for path in written))


def _count(flag: str, text: str) -> float:
    from llmkit.plan import parse_count

    try:
        return float(parse_count(text))
    except LlmkitError:
        raise LlmkitError(f"{flag} '{text}' is not a positive count", f"e.g. {flag} 1e16") from None


def _pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise LlmkitError(f"--predict '{text}' is not N,D", "e.g. --predict 5M,100M (parameters,tokens)")
    return _count("--predict", parts[0]), _count("--predict", parts[1])
