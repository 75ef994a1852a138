"""Sharded training (FSDP2) and distributed checkpoints (DCP) on the CPU: gloo, torchrun, 1-2 processes.

The guarantees: FSDP over 2 processes trains the same losses as one plain process with the same global
batch (within 1e-5: the sums run in another order); each process holds about half the weights and
optimizer states; a sharded checkpoint resumes bit for bit on the same number of processes, loads on
one, and survives a process killed mid-save; fine-tuning (full and LoRA) the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import test_train
import torch
from test_train import configs, losses, toml_for

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.config import TrainConfig
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.train import dcp, distributed, loop, pretrain
from llmkit.train.step import make_state

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"
ATOL = 1e-5
data_dirs = test_train.data_dirs  # the fixtures: tiny tokenized corpora, one torch thread
one_thread = test_train.one_thread


def torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node N ARGS`` on the CPU (gloo), one thread
    each (--standalone: a free port for the rendezvous). The output goes to files, not pipes: torchrun's
    workers run in sessions of their own, and one left behind would hold a pipe open. On a timeout torchrun
    is sent SIGTERM, on which it stops its workers, and the test fails with their output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    out, err = (Path(tempfile.mkstemp(dir=cwd, prefix=f".torchrun-{stream}-")[1]) for stream in ("out", "err"))
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=stdout, stderr=stderr, text=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            pytest.fail(f"torchrun timed out after {timeout} s: {err.read_text()[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out.read_text(), err.read_text())


def run_config(tmp_path: Path, family: str, data_dirs, name: str = "run.toml", **train) -> Path:
    model_cfg, train_cfg = configs(family, data_dirs, tmp_path / "one", **train)
    path = tmp_path / name
    path.write_text(toml_for(model_cfg, train_cfg))
    return path


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    """A run directory's weights: the single file, or a distributed checkpoint converted in this process."""
    if dcp.is_dcp(run):
        out = run.parent / f"{run.name}-converted"
        if not out.exists():
            dcp.convert(run, out)
        run = out
    return checkpoint.read_weights(run / checkpoint.WEIGHTS)


# ---- one process ----------------------------------------------------------------------------
def test_fsdp_on_one_process_trains_as_the_plain_model(data_dirs, tmp_path):
    """FSDP with a process group of one (no torchrun): the same losses and weights as the plain run
    within 1e-6, and a distributed checkpoint (shards + metadata) instead of model.safetensors."""
    plain = pretrain(*configs("decoder", data_dirs, tmp_path / "plain", steps=4, grad_accum=2))
    sharded = pretrain(*configs("decoder", data_dirs, tmp_path / "fsdp", steps=4, grad_accum=2, parallel="fsdp"))
    assert abs(plain["train_loss"] - sharded["train_loss"]) < 1e-6
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "fsdp")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-6 for s in a)
    assert dcp.is_dcp(tmp_path / "fsdp") and not (tmp_path / "fsdp" / checkpoint.WEIGHTS).exists()
    checkpoint.verify_manifest(tmp_path / "fsdp", skip=(loop.METRICS, loop.LOSS_PLOT))
    wa, wb = weights_of(tmp_path / "plain"), weights_of(tmp_path / "fsdp")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert not torch.distributed.is_initialized()  # the run left its group of one


def test_local_bytes_count_shards_and_optimizer_states(data_dirs, tmp_path):
    """``step_bytes`` of a plain model's step: 4 bytes per weight, per gradient, 8 of AdamW's two moments."""
    model_cfg, train_cfg = configs("decoder", data_dirs, tmp_path)
    state = make_state(build_model(model_cfg), train_cfg)
    n = sum(p.numel() for p in state.raw.parameters())
    run = loop.PretrainRun(model_cfg, train_cfg, state.env, False)
    run.setup()
    assert dcp.step_bytes(state, run.batches(0)) == {"weights": 4 * n, "gradients": 4 * n, "optimizer": 8 * n}
    assert dcp.local_bytes(state.raw, state.optimizer)["gradients"] == 0  # freed after the step


def test_parallel_settings_are_checked(data_dirs, tmp_path):
    with pytest.raises(LlmkitError, match="parallel='zero'"):
        TrainConfig(parallel="zero")
    with pytest.raises(LlmkitError, match="fsdp_offload applies to sharded training only"):
        TrainConfig(fsdp_offload=True)
    model_cfg, train_cfg = configs("decoder", data_dirs, tmp_path, parallel="fsdp", fsdp_offload=True)
    with pytest.raises(LlmkitError, match="trains on the CPU already"):
        make_state(build_model(model_cfg), train_cfg)
    assert TrainConfig().parallel == "ddp"  # today's behaviour stays the default


def test_a_run_resumes_only_in_the_format_it_saved(data_dirs, tmp_path, capsys):
    """A sharded run's checkpoint is a distributed one: resuming it without --train.parallel fsdp (or a plain
    run's with it) is a one-line error naming the flag."""
    config = run_config(tmp_path, "decoder", data_dirs, steps=2, save_interval=2, eval_interval=2, parallel="fsdp")
    assert main(["pretrain", "--config", str(config), "--train.out_dir", str(tmp_path / "run")]) == 0
    args = ["pretrain", "--config", str(config), "--train.out_dir", str(tmp_path / "run"), "--resume"]
    assert main([*args, "--train.parallel", "ddp", "--train.steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "saved with parallel='fsdp'" in err and "--train.parallel fsdp" in err


def test_convert_from_dcp_is_a_plain_checkpoint(data_dirs, tmp_path, capsys):
    """`llmkit convert --from-dcp RUN OUT`: the plain checkpoint loads and gives the sharded run's val loss."""
    config = run_config(tmp_path, "decoder", data_dirs, steps=2, save_interval=2, eval_interval=2, parallel="fsdp")
    assert main(["pretrain", "--config", str(config), "--train.out_dir", str(tmp_path / "run")]) == 0
    assert main(["convert", "--from-dcp", str(tmp_path / "run"), str(tmp_path / "plain")]) == 0
    assert "converted" in capsys.readouterr().out
    model = checkpoint.load(tmp_path / "plain")
    assert model.tokenizer is not None and not (tmp_path / "plain" / loop.TRAIN_STATE).exists()
    model_cfg, train_cfg = configs("decoder", data_dirs, tmp_path / "x")
    env = distributed.init("cpu")
    state = make_state(model.float(), train_cfg, env)
    run = loop.PretrainRun(model_cfg, train_cfg, env, False)
    run.setup()
    val = loop.evaluate(state, run.data, run.objective)
    assert abs(val - losses(tmp_path / "run", "val_loss")[2]) < 1e-6
    assert main(["convert", "--from-dcp", str(tmp_path / "plain"), str(tmp_path / "again")]) == 2
    assert "holds no distributed checkpoint" in capsys.readouterr().err


# ---- the data each process draws ------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_world_size_splits_the_data_without_overlap_or_gap(world, data_dirs, tmp_path):
    """For 1-4 processes: fine-tuning examples, one epoch of global batches, are each drawn once over all
    ranks; pretraining windows of a batch over the ranks are exactly one process's batch of world x B rows,
    and a random objective (masking) gives every row the same masks whatever the split (``draw_batch``)."""
    from llmkit.finetune.data import Encoded, Examples
    from llmkit.objectives import make_objective
    from llmkit.train.distributed import Dist
    from llmkit.train.step import derive_seed, draw_batch

    B, n = 2, 48  # 48 examples: an epoch is 48 / (2 * world) global batches for world 1-4
    examples = Examples([Encoded([i + 1], 0) for i in range(n)], pad_id=0)
    drawn = [int(examples.batch(index, B, seed=7, rank=r, world_size=world).inputs["input_ids"][row, 0]) - 1
             for index in range(n // (B * world)) for r in range(world) for row in range(B)]  # fmt: skip
    assert sorted(drawn) == list(range(n))

    model_cfg, cfg = configs("encoder", data_dirs, tmp_path, batch_size=B)
    data = loop.TokenDataset(cfg.data)
    objective = make_objective(model_cfg, cfg, data.tokenizer())
    seed = derive_seed(cfg.seed, 0, 5, 0, 0)
    one = draw_batch(data, objective, "train", 5, TrainConfig(**{**cfg.to_dict(), "batch_size": B * world}),
                     Dist(0, 1, 0, torch.device("cpu")), seed)  # fmt: skip
    parts = [draw_batch(data, objective, "train", 5, cfg, Dist(r, world, r, torch.device("cpu")), seed)
             for r in range(world)]  # fmt: skip
    assert torch.equal(torch.cat([p.inputs["input_ids"] for p in parts]), one.inputs["input_ids"])
    assert torch.equal(torch.cat([p.labels for p in parts]), one.labels)


# ---- two processes under torchrun -----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family", ["decoder", "encoder_decoder"])
def test_two_sharded_processes_match_one_with_the_same_global_batch(family, data_dirs, tmp_path):
    """torchrun 2 x FSDP (batch 2, 2 micro-batches each, clipping on) == one plain process (batch 4, 2
    micro-batches): train and val losses within 1e-5 at every step, and the same final weights."""
    config = run_config(tmp_path, family, data_dirs, steps=6, batch_size=4, grad_accum=2, eval_interval=3,
                        save_interval=6, grad_clip=0.5)  # fmt: skip
    assert main(["pretrain", "--config", str(config)]) == 0
    args = ["-m", "llmkit", "pretrain", "--config", str(config), "--train.batch_size", "2"]
    args += ["--train.parallel", "fsdp", "--train.out_dir", str(tmp_path / "two")]
    result = torchrun(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys() == set(range(1, 7))
    assert all(abs(one[s] - two[s]) < ATOL for s in one), (one, two)
    val_one, val_two = losses(tmp_path / "one", "val_loss"), losses(tmp_path / "two", "val_loss")
    assert val_one.keys() == val_two.keys() and all(abs(val_one[s] - val_two[s]) < ATOL for s in val_one)
    assert sorted(p.name for p in (tmp_path / "two" / dcp.DCP_DIR).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    wa, wb = weights_of(tmp_path / "one"), weights_of(tmp_path / "two")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=ATOL) for k in wa)


@pytest.mark.slow
def test_a_late_process_does_not_take_the_fresh_run_for_an_old_one(data_dirs, tmp_path):
    """Rank 1 opens out_dir 5 s after rank 0. FSDP's sharding does not synchronize the processes (DDP's
    construction did), so rank 0 used to write the run's log first, and rank 1, finding it, took the run for
    one stopped before its first checkpoint and waited in a barrier forever (a hang seen under load)."""
    config = run_config(tmp_path, "decoder", data_dirs, steps=2, eval_interval=2, save_interval=2, parallel="fsdp")
    args = [str(WORKER), "slow-rank-1", "pretrain", "--config", str(config), "--train.batch_size", "4"]
    result = torchrun([*args, "--train.out_dir", str(tmp_path / "two")], tmp_path, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting the run from step 0" not in result.stderr and set(losses(tmp_path / "two")) == {1, 2}


@pytest.mark.slow
def test_each_process_holds_about_half_of_the_weights_and_optimizer(data_dirs, tmp_path):
    """Measured from the shards' local sizes after a step: per process, weights + gradients + AdamW
    states are at most 55% of the single process's; and a 2-process distributed checkpoint read whole in
    one process equals the weights the two processes gathered, bit for bit."""
    model_cfg, train_cfg = configs("decoder", data_dirs, tmp_path / "one", batch_size=4)
    state = make_state(build_model(model_cfg), train_cfg)
    run = loop.PretrainRun(model_cfg, train_cfg, state.env, False)
    run.setup()
    single = dcp.step_bytes(state, run.batches(0))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": model_cfg.to_dict(), "train": {**train_cfg.to_dict(), "batch_size": 2}}))
    result = torchrun([str(WORKER), "measure", str(spec), str(tmp_path / "ckpt")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ckpt" / f"bytes-{r}.json").read_text()) for r in range(2)]
    total = sum(single.values())
    for rank in ranks:
        assert sum(rank.values()) <= 0.55 * total, (rank, single)
        assert rank["optimizer"] <= 0.55 * single["optimizer"]
    assert abs(sum(r["weights"] for r in ranks) - single["weights"]) <= 0.01 * single["weights"]  # padding only
    gathered = torch.load(tmp_path / "ckpt" / "gathered.pt", weights_only=True)
    model = build_model(model_cfg, init=False)
    dcp.read_weights(tmp_path / "ckpt" / "run", model)
    mine = model.state_dict()
    assert mine.keys() == gathered.keys() and all(torch.equal(mine[k], gathered[k]) for k in mine)


@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly_survives_a_kill_and_reshards(data_dirs, tmp_path):
    """2 processes x 8 steps straight, against 2 processes of which one is SIGKILLed while writing its
    shard of the step-8 save: the step-4 checkpoint stays whole and loadable, resuming it on 2 processes
    gives the straight run's losses and weights bit for bit, and on 1 process (FSDP, twice the batch)
    the same losses within 1e-5."""
    config = run_config(tmp_path, "decoder", data_dirs, steps=8, batch_size=4, save_interval=4, eval_interval=4,
                        parallel="fsdp")  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    base = ["--config", str(config), "--train.batch_size", "2", "--train.out_dir"]
    result = torchrun(["-m", "llmkit", "pretrain", *base, str(straight)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun([str(WORKER), "kill-mid-save", "pretrain", *base, str(killed)], tmp_path)
    assert result.returncode != 0 and "SIGKILL" in result.stderr, result.stderr[-3000:]
    assert max(losses(killed)) == 8  # it trained to the end and died in the second save
    assert torch.load(killed / loop.TRAIN_STATE, weights_only=True)["step"] == 4  # the previous checkpoint
    checkpoint.verify_manifest(killed, skip=(loop.METRICS, loop.LOSS_PLOT))
    dcp.convert(killed, tmp_path / "at-4")  # loadable in one process
    assert checkpoint.load(tmp_path / "at-4") is not None
    shutil.copytree(killed, tmp_path / "one-process")

    result = torchrun(["-m", "llmkit", "pretrain", *base, str(killed), "--resume"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(p.name.startswith(".killed.") for p in tmp_path.iterdir())  # the leftover was removed
    a, b = weights_of(straight), weights_of(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(killed) == losses(straight) and losses(killed, "val_loss") == losses(straight, "val_loss")

    args = ["pretrain", "--config", str(config), "--train.out_dir", str(tmp_path / "one-process"), "--resume"]
    assert main(args) == 0  # 1 process, batch 4: the saved run's 2 x 2 rows
    one = losses(tmp_path / "one-process")
    assert all(abs(one[s] - losses(straight)[s]) < ATOL for s in range(5, 9)), (one, losses(straight))


# ---- fine-tuning ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_base(tmp_path_factory):
    """A random tiny Llama (transformers) converted to llmkit, with a byte-level BPE: test_finetune's."""
    import test_finetune
    from test_finetune import _save_hf, llama_config, transformers

    from llmkit.data.tokenizer_train import train_tokenizer
    from llmkit.hf import from_hf

    root = tmp_path_factory.mktemp("llama")
    bpe = train_tokenizer(test_finetune.CORPUS, "bpe", vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    from_hf(_save_hf(transformers.LlamaForCausalLM(llama_config()), bpe, root / "hf"), root / "llmkit")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_sharded_finetuning_matches_one_process(method, llama_base, tmp_path):
    """`llmkit finetune` (a Llama sequence classifier) under torchrun, 2 x FSDP with batch 4, against one
    process with batch 8: train losses at every step and the dev scores within 1e-5. LoRA: the adapter the
    sharded run wrote loads in peft, which then gives the logits of the run's merged best model."""
    from test_finetune import _config, _evals

    config = _config(tmp_path, llama_base / "llmkit", steps=6, eval_interval=3, save_interval=6, log_interval=1,
                     lr=1e-2, out_dir=str(tmp_path / "one"))  # fmt: skip
    flags = ["--method.name", method]
    assert main(["finetune", "--config", str(config), *flags]) == 0
    args = ["-m", "llmkit", "finetune", "--config", str(config), *flags, "--train.batch_size", "4"]
    result = torchrun([*args, "--train.parallel", "fsdp", "--train.out_dir", str(tmp_path / "two")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(tmp_path / "one" / "last"), losses(tmp_path / "two" / "last")
    assert one.keys() == two.keys() == set(range(1, 7))
    assert all(abs(one[s] - two[s]) < ATOL for s in one), (one, two)
    dev_one, dev_two = _evals(tmp_path / "one"), _evals(tmp_path / "two")
    assert [e["step"] for e in dev_one] == [e["step"] for e in dev_two] == [0, 3, 6]
    for a, b in zip(dev_one, dev_two, strict=True):
        assert all(abs(a[k] - b[k]) < ATOL for k in a), (a, b)
    assert dcp.is_dcp(tmp_path / "two" / "last")
    if method == "lora":
        _check_adapter_in_peft(llama_base / "hf", tmp_path / "two")


def _check_adapter_in_peft(hf_dir: Path, run: Path) -> None:
    peft = pytest.importorskip("peft")
    from test_finetune import _batch, transformers

    best = checkpoint.load(run / "best").eval()
    base = transformers.LlamaForSequenceClassification.from_pretrained(hf_dir, num_labels=2, pad_token_id=0)
    theirs = peft.PeftModel.from_pretrained(base, run / "adapter").eval()
    ids, mask = _batch(best.tokenizer, ["the film was great", "bad plot and cast"], 0)
    with torch.no_grad():
        mine, peft_logits = best(input_ids=ids, attention_mask=mask).logits, theirs(input_ids=ids).logits
        assert (mine - peft_logits).abs().max() <= ATOL, (mine, peft_logits)
        with theirs.disable_adapter():  # the adapter matters: not base against base
            assert (theirs(input_ids=ids).logits - mine).abs().max() > 1e-3


@pytest.mark.parametrize(
    "setting,tolerance",
    [({"activation_checkpointing": True}, 1e-6), ({"dtype": "bf16"}, 2e-2)],
    ids=["checkpointing", "bf16"],
)
def test_fsdp_composes_with_checkpointing_and_bf16(setting, tolerance, data_dirs, tmp_path):
    """Each switch under FSDP (one process) trains the losses of the plain model with the same switch:
    activation checkpointing exactly (1e-6); bf16 (FSDP's mixed-precision policy: bf16 weights gathered,
    fp32 gradient reduction, fp32 shards) within bf16's rounding of the plain run's autocast. (CPU offload
    needs a GPU: tests/test_cuda.py.)"""
    plain = tmp_path / "plain"
    pretrain(*configs("decoder", data_dirs, plain, steps=3, eval_interval=3, save_interval=3, **setting))
    sharded = tmp_path / "fsdp"
    pretrain(*configs("decoder", data_dirs, sharded, steps=3, eval_interval=3, save_interval=3, parallel="fsdp",
                      **setting))  # fmt: skip
    a, b = losses(plain), losses(sharded)
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < tolerance for s in a), (a, b)


@pytest.mark.slow
def test_fsdp_composes_with_compile(data_dirs, tmp_path):
    """torch.compile of each block under FSDP (one process): the eager sharded run's losses within 1e-5."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    pretrain(*configs("decoder", data_dirs, eager, steps=2, eval_interval=2, save_interval=2, parallel="fsdp"))
    pretrain(*configs("decoder", data_dirs, compiled, steps=2, eval_interval=2, save_interval=2, parallel="fsdp",
                      compile=True))  # fmt: skip
    a, b = losses(eager), losses(compiled)
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < ATOL for s in a), (a, b)
