"""Scaling laws from your own runs, end to end on the built-in corpus (docs/scaling.md).

1. data: a byte-level BPE tokenizer and token shards of the Python documentation and standard library
   that every Python installation carries (`llmkit tokenizer train`, `llmkit data tokenize`);
2. an IsoFLOP sweep, 3 budgets x 5 sizes of a Llama-style decoder (`llmkit scale sweep --workers 2`);
3. both Chinchilla fits with bootstrap intervals (`llmkit scale fit`'s library), printed beside the
   published values, with the fitted tokens per parameter beside Chinchilla's 20;
4. a held-out run at 4x the largest budget, at the size the fit calls compute-optimal (the swept
   shape family's nearest width), trained as one more sweep point: its final validation loss
   against the loss the fit predicted for its (N, D), and the 5% target;
5. the pictures (IsoFLOP curves, N* and D* against C, the loss frontier with the held-out run) into
   docs/images/scaling_*.png (--quick: into the run directory, leaving docs/ alone).

The full bench is sized for 2 CPU cores in well under 45 minutes (about 20 on a quiet machine: two
worker processes of one thread each for the sweep, then the held-out run with both threads);
--quick is a tiny end-to-end check of the same path (about 2 minutes) that the test suite does not
run. A killed bench resumes: run it again.

  .venv/bin/python bench/scaling_sweep.py            # the full bench; pictures for docs/scaling.md
  .venv/bin/python bench/scaling_sweep.py --quick    # tiny sizes, a few minutes
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmkit.cli import main  # noqa: E402
from llmkit.plan.report import sci  # noqa: E402

# The base model is the quickstart's shape (configs/quickstart.toml: 4 layers, 128 wide, d_ff 352, 2
# query heads per key/value head) with 16-wide heads and a 1024-token vocabulary, so that the tied
# output head does not dwarf the smallest models. The widths are a ladder (N = 20K-868K); each budget
# trains the 5 whose D/N lies nearest Chinchilla's 20 (sizes_per_budget), so width 16 gives the
# smallest budget a left arm and width 128 trains only at the largest. The lr scales with width as
# (128 / width)^0.5 (a check at one budget: docs/scaling.md), and a point short of 200 steps trains a
# smaller batch (target_steps): the old bench's one lr and 41-step schedules left its largest points
# far above their frontier, and its held-out prediction missed by +7.6%. The budgets are the old
# bench's, capped by the data: the corpus is 4.3M training tokens. Measured here (one thread, bf16,
# batch 16 x 128, load ~2): 14 GFLOP/s at width 32 to 47 at 96, so the sweep (2.35e13 FLOPs, two
# workers) takes ~10 minutes and the held-out run (1.2e13, two threads) ~5 on a quiet machine, ~3x
# that on a busy one.
FULL = {
    "sources": ["python-docs", "python-stdlib"],
    "vocab": 1024,
    "base": {
        "preset": "tiny-llama-10m",
        "n_layer": 4,
        "d_model": 128,
        "n_head": 8,
        "n_kv_head": 4,
        "d_ff": 352,
        "max_seq_len": 128,
    },  # fmt: skip
    "widths": [16, 32, 48, 64, 96, 128],  # the ladder each budget takes its 5 sizes from
    "budgets": [5e11, 1.2e12, 3e12],
    "train": {
        "batch_size": 16,
        "block_size": 128,
        "lr": 3e-3,  # at the base's width 128; lr_width_exponent scales it per size
        "min_lr": 3e-4,
        "weight_decay": 0.1,
        "beta2": 0.99,
        "eval_batches": 40,
        "save_interval": 200,
        "log_interval": 10,
        "dtype": "bf16",
    },  # fmt: skip
    "rules": {
        "sizes_per_budget": 5,
        "tokens_per_param": 20,
        "lr_width_exponent": 0.5,
        "target_steps": 200,
        "min_steps": 20,
    },  # fmt: skip
    "bootstrap": 100,
}
QUICK = {
    "sources": ["python-docs"],
    "vocab": 512,
    "base": {
        "preset": "tiny-llama-10m",
        "n_layer": 2,
        "d_model": 32,
        "n_head": 2,
        "n_kv_head": 1,
        "d_ff": 88,
        "max_seq_len": 64,
    },  # fmt: skip
    "widths": [16, 32, 48, 64, 80],
    "budgets": [1e10, 2e10, 4e10],
    "train": {
        "batch_size": 8,
        "block_size": 64,
        "lr": 3e-3,
        "min_lr": 3e-4,
        "weight_decay": 0.1,
        "beta2": 0.99,
        "eval_batches": 8,
        "save_interval": 100,
        "log_interval": 10,
        "dtype": "bf16",
    },  # fmt: skip
    "rules": {"lr_width_exponent": 0.5, "target_steps": 50, "min_steps": 10},
    "bootstrap": 20,
}
HELD_OUT_FACTOR = 4
TARGET = 0.05  # the held-out loss within 5% of the prediction


def ratio(value: float) -> str:
    """Tokens per parameter: one decimal, or 3 digits with an exponent for a runaway fit's."""
    return f"{value:.1f}" if value < 1e5 else sci(value)


def toml(value) -> str:
    return json.dumps(value)  # JSON scalars and lists are TOML's too


def sweep_config(
    spec: dict, data: Path, out: Path, budgets: list[float], widths: list[int], held_out: bool = False
) -> str:
    """The sweep's TOML; ``held_out``: one point trained by the same rules (its one width, not a window)."""
    rules = {k: v for k, v in spec["rules"].items() if not (held_out and k == "sizes_per_budget")}
    lines = ["[model]"] + [f"{k} = {toml(v)}" for k, v in spec["base"].items()]
    lines += ["", "[train]", f"data = {toml(str(data))}"] + [f"{k} = {toml(v)}" for k, v in spec["train"].items()]
    lines += ["", "[sweep]", f"budgets = {toml(budgets)}", f"widths = {toml(widths)}"]
    lines += [f"{k} = {toml(v)}" for k, v in rules.items()] + [f"out_dir = {toml(str(out))}"]
    return "\n".join(lines) + "\n"


def run(argv: list[str]) -> None:
    print("$ llmkit " + " ".join(argv), flush=True)
    code = main(argv)
    if code != 0:
        raise SystemExit(f"llmkit {argv[0]} failed with exit code {code}")


def make_data(spec: dict, out: Path) -> Path:
    tokenizer, data = out / "tokenizer", out / "data"
    if not (tokenizer / "tokenizer.json").is_file():
        builtin = [flag for name in spec["sources"] for flag in ("--builtin", name)]
        run(
            [
                "tokenizer",
                "train",
                *builtin,
                "--kind",
                "bpe",
                "--vocab-size",
                str(spec["vocab"]),
                "--out",
                str(tokenizer),
            ]
        )
    if not (data / "meta.json").is_file():
        run(["data", "tokenize", *[f"builtin:{name}" for name in spec["sources"]], "--tokenizer", str(tokenizer),
             "--out", str(data)])  # fmt: skip
    return data


def held_out_width(spec: dict, params: float, config: Path) -> tuple[int, int]:
    """The width of the swept family (multiples of the base's head_dim, up to twice the widest swept)
    whose N is nearest ``params`` in log: (width, its N)."""
    from llmkit.scale.grid import count_model, shape_for
    from llmkit.scale.sweep import load_sweep_config

    model, train, _ = load_sweep_config(config)  # the base model with the data's vocabulary
    candidates = range(model.head_dim, 2 * max(spec["widths"]) + 1, model.head_dim)
    sized = [(w, count_model(shape_for(model, w), train.block_size)[0]) for w in candidates]
    return min(sized, key=lambda pair: abs(math.log(pair[1] / params)))


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the whole path in a few minutes")
    parser.add_argument("--out", help="run directory (default runs/scaling-bench or runs/scaling-bench-quick)")
    parser.add_argument("--workers", type=int, default=2, help="sweep processes (default 2: one per core)")
    args = parser.parse_args()
    spec = QUICK if args.quick else FULL
    out = Path(args.out or ROOT / "runs" / ("scaling-bench-quick" if args.quick else "scaling-bench"))
    images = out / "images" if args.quick else ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    # 1. data
    data = make_data(spec, out)
    ready = time.perf_counter()

    # 2. the sweep
    config = out / "sweep.toml"
    config.write_text(sweep_config(spec, data, out / "sweep", spec["budgets"], spec["widths"]))
    run(["scale", "sweep", "--config", str(config), "--workers", str(args.workers), "--threads", str(args.workers)])
    swept = time.perf_counter()

    # 3. the fits
    from llmkit.scale.report import fit_results, render
    from llmkit.scale.results import read_results

    results = read_results(out / "sweep" / "results.jsonl")
    held_budget = HELD_OUT_FACTOR * max(spec["budgets"])
    fit = fit_results(results, str(out / "sweep" / "results.jsonl"), budgets=[*spec["budgets"], held_budget],
                      bootstrap=spec["bootstrap"])  # fmt: skip
    print(render(fit), flush=True)

    # 4. the held-out run at 4x the largest budget, at the size the fit calls optimal
    if not fit.law.degenerate:
        target, source = fit.law.optimal(held_budget)[0], "approach 3"
    elif fit.approach2.n_law is not None:
        target, source = float(fit.approach2.n_law(held_budget)), "approach 2"
    else:
        target, source = max(r.params for r in results), "the largest swept size (neither fit has an optimum)"
    width, _ = held_out_width(spec, target, config)
    held = out / "heldout.toml"
    held.write_text(sweep_config(spec, data, out / "heldout", [held_budget], [width], held_out=True))
    run(["scale", "sweep", "--config", str(held), "--threads", str(args.workers)])
    done = time.perf_counter()
    measured = read_results(out / "heldout" / "results.jsonl")[0]
    predicted, bounds = fit.predicted(measured.params, measured.tokens)
    error = measured.val_loss / predicted - 1

    # 5. pictures
    label = f"held out: {HELD_OUT_FACTOR}x the largest budget"
    from llmkit.scale.plots import write_plots

    paths = write_plots(fit, images, held_out=[(measured.flops, measured.val_loss, label)], prefix="scaling_")

    # the summary
    o3 = fit.optimal3(held_budget)
    o2 = fit.optimal2(held_budget)
    interval = f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else ""
    flops = sum(r.flops for r in results)
    print()
    print(f"held-out run: C {sci(measured.flops)} ({HELD_OUT_FACTOR}x {sci(max(spec['budgets']))}), width {width} "
          f"(N {measured.params:,.0f}, nearest to {source}'s N_opt {target:,.0f}), "
          f"D {measured.tokens:,.0f}")  # fmt: skip
    print(f"  predicted final loss (approach 3): {predicted:.4f}{interval}")
    print(f"  measured final loss:               {measured.val_loss:.4f}")
    print(f"  error: {error:+.2%} (target within {TARGET:.0%}: {'met' if abs(error) <= TARGET else 'NOT met'})")
    tpp3, tpp3_ci = o3["tokens_per_param"]
    tpp2 = f"; approach 2: {ratio(o2['tokens_per_param'])}" if o2 else ""
    shown = f" [{ratio(tpp3_ci[0])}, {ratio(tpp3_ci[1])}]" if tpp3_ci else ""
    print(f"tokens per parameter at {sci(held_budget)} FLOPs: approach 3 {ratio(tpp3)}{shown}{tpp2} (Chinchilla: 20)")
    print(f"pictures: {', '.join(str(p) for p in paths)}")
    print(f"time: data {ready - start:.0f} s, sweep {swept - ready:.0f} s ({len(results)} points, {sci(flops)} FLOPs, "
          f"{flops / max(swept - ready, 1e-9) / 1e9:.1f} GFLOP/s), held-out {done - swept:.0f} s; "
          f"total {time.perf_counter() - start:.0f} s")  # fmt: skip
    summary = {
        "quick": args.quick, "points": len(results), "budgets": spec["budgets"], "widths": spec["widths"],
        "law": fit.law.to_dict(), "a2": fit.to_dict()["approach2"], "held_out": {
            "flops": measured.flops, "width": width, "params": measured.params, "tokens": measured.tokens,
            "predicted": predicted, "interval": bounds, "measured": measured.val_loss, "error": error},
        "tokens_per_param": {"approach3": tpp3, "approach2": o2["tokens_per_param"] if o2 else None},
        "seconds": {"data": ready - start, "sweep": swept - ready, "held_out": done - swept},
    }  # fmt: skip
    (out / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main_bench()
