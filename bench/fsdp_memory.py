"""Per-process memory of sharded training: the planner's ZeRO-3 prediction against FSDP measured, 1, 2, 4 processes.

For each process count N it launches ``torchrun --nproc-per-node N`` (gloo, CPU, one thread each) on this
script's worker, which builds the model, shards it with llmkit's ``--train.parallel fsdp`` path
(``make_state``), trains one step on random tokens and reports ``llmkit.train.dcp.step_bytes``: the bytes
each process holds of the weights, of the gradients as AdamW starts (read in its step pre-hook), and of
AdamW's two moments, read from the shards' local tensors (DTensor.to_local). The prediction is the command a user
would run, ``llmkit plan MODEL --zero 3 --gpus N --precision fp32 --json``: its weights + gradients +
optimizer states per GPU. The table prints both and their ratio (the largest rank; FSDP splits each
tensor's first dimension in N, the last rank's part is shorter when it does not divide).

Activations are not in the comparison: ZeRO does not shard them (each process keeps its own batch's), and
`llmkit plan --measure` checks them on one device.

    .venv/bin/python bench/fsdp_memory.py                  # tiny-llama-10m, 1 2 4 processes
    .venv/bin/python bench/fsdp_memory.py --procs 1 2 --model tiny-gpt-10m
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, SEQ = 2, 64


def worker(model_name: str, out: str) -> None:
    import torch

    from llmkit.config import ModelConfig, TrainConfig
    from llmkit.models import build_model
    from llmkit.train import dcp, distributed
    from llmkit.train.memory import random_batch
    from llmkit.train.step import make_state

    torch.set_num_threads(1)
    cfg = ModelConfig.from_name(model_name)
    train = TrainConfig(device="cpu", dtype="fp32", parallel="fsdp", batch_size=BATCH, block_size=SEQ, warmup_steps=1)
    env = distributed.init("cpu")
    torch.manual_seed(0)
    state = make_state(build_model(cfg), train, env)
    batch = random_batch(cfg, BATCH, SEQ, env.device, torch.Generator().manual_seed(env.rank))
    Path(out, f"bytes-{env.rank}.json").write_text(json.dumps(dcp.step_bytes(state, [batch])))
    distributed.cleanup()


def measured(model_name: str, procs: int) -> list[dict]:
    """Each rank's local bytes after one sharded step under torchrun with ``procs`` processes."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
                   __file__,
                   "--worker", "--model", model_name, "--out", out]  # fmt: skip
        subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=600)
        return [json.loads(Path(out, f"bytes-{r}.json").read_text()) for r in range(procs)]


def predicted(model_name: str, procs: int) -> dict:
    """`llmkit plan MODEL --zero 3 --gpus N --precision fp32 --json`: the sharded states per GPU."""
    command = [sys.executable, "-m", "llmkit", "plan", model_name, "--zero", "3", "--gpus", str(procs),
               "--precision", "fp32", "--batch", str(BATCH), "--seq", str(SEQ), "--json"]  # fmt: skip
    plan = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
    t = plan["training_bytes_per_gpu"]
    return {
        "weights": t["weights"] + t["master_weights"],
        "gradients": t["gradients"],
        "optimizer": t["optimizer_states"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-llama-10m", help="a preset name (default tiny-llama-10m)")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4], help="process counts (default 1 2 4)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.model, args.out)
        return
    mb = 1e6
    print(f"{args.model}, fp32 weights + gradients + AdamW, FSDP on the CPU (gloo); MB per process (10^6 bytes)")
    print(f"{'procs':>5} | {'predicted':>9} {'weights':>8} {'grads':>8} {'adam':>8} | {'measured':>9} "
          f"{'weights':>8} {'grads':>8} {'adam':>8} | {'ratio':>6}")  # fmt: skip
    worst = 0.0
    for n in args.procs:
        plan, ranks = predicted(args.model, n), measured(args.model, n)
        biggest = max(ranks, key=lambda r: sum(r.values()))
        ratio = sum(biggest.values()) / sum(plan.values())
        worst = max(worst, abs(ratio - 1))
        row = [sum(plan.values()), plan["weights"], plan["gradients"], plan["optimizer"]]
        row += [sum(biggest.values()), biggest["weights"], biggest["gradients"], biggest["optimizer"]]
        cells = [f"{v / mb:>{9 if i % 4 == 0 else 8}.2f}" for i, v in enumerate(row)]
        print(f"{n:>5} | {' '.join(cells[:4])} | {' '.join(cells[4:])} | {ratio:>6.3f}", flush=True)
    print(f"largest deviation of measured from predicted: {worst:.1%} (bound: 15%)")


if __name__ == "__main__":
    main()
