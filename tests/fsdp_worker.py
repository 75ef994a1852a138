"""What tests/test_fsdp.py runs under torchrun besides `llmkit pretrain` itself (not a test module).

``measure SPEC OUT``: build the model of SPEC (a JSON {"model": ..., "train": ...}), shard it, train one
step, write each process's ``dcp.step_bytes`` to OUT/bytes-RANK.json, save a distributed checkpoint to
OUT/run and the weights gathered whole to OUT/gathered.pt.

``slow-rank-1 ARGS...``: run ``llmkit ARGS`` with rank 1 opening the run 5 s after rank 0.

``kill-mid-save ARGS...``: run ``llmkit ARGS`` with rank 1 SIGKILLing itself as it starts writing its
shard of the second save (rank 0 may be writing its own): a process killed in the middle of a save.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch


def measure(spec_path: str, out: str) -> None:
    from llmkit.config import ModelConfig, TrainConfig
    from llmkit.models import build_model
    from llmkit.train import dcp, distributed, loop
    from llmkit.train.step import make_state

    spec = json.loads(Path(spec_path).read_text())
    model_cfg, train_cfg = ModelConfig.from_dict(spec["model"]), TrainConfig.from_dict(spec["train"])
    train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "parallel": "fsdp"})
    env = distributed.init("cpu")
    torch.manual_seed(train_cfg.seed)
    state = make_state(build_model(model_cfg), train_cfg, env)
    run = loop.PretrainRun(model_cfg, train_cfg, env, False)
    run.setup()
    measured = dcp.step_bytes(state, run.batches(0))
    out = Path(out)
    out.mkdir(exist_ok=True)
    (out / f"bytes-{env.rank}.json").write_text(json.dumps(measured))
    dcp.save(state, out / "run", train_state={"step": state.step}, tokenizer=run.tokenizer)
    gathered = dcp.full_state_dict(state.raw)
    if env.is_main:
        torch.save(gathered, out / "gathered.pt")
    distributed.cleanup()


def slow_rank_1(args: list[str]) -> int:
    """``llmkit ARGS`` with rank 1 five seconds late to open the run (a slow file system, a busy machine)."""
    import time

    from llmkit.cli import main
    from llmkit.train import loop

    real = loop.Run._open_out_dir

    def late(self, *a, **kw):
        if self.env.rank == 1:
            time.sleep(5)
        return real(self, *a, **kw)

    loop.Run._open_out_dir = late
    return main(args)


def kill_mid_save(args: list[str]) -> int:
    from torch.distributed.checkpoint import FileSystemWriter

    from llmkit.cli import main

    real, calls = FileSystemWriter.write_data, []

    def write_data(self, plan, planner):
        calls.append(1)
        if len(calls) == 2 and int(os.environ["RANK"]) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, plan, planner)

    FileSystemWriter.write_data = write_data
    return main(args)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "measure":
        measure(*sys.argv[2:])
    elif sys.argv[1] == "slow-rank-1":
        sys.exit(slow_rank_1(sys.argv[2:]))
    else:
        sys.exit(kill_mid_save(sys.argv[2:]))
