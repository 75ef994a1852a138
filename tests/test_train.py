"""Pretraining: lr schedule, overfitting each family, exact resume, DDP = one process, nan stop, CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.config import ModelConfig, TrainConfig
from llmkit.data.builtin import python_docs_texts
from llmkit.data.datasets import TokenDataset
from llmkit.data.shards import tokenize_corpus
from llmkit.data.tokenizer_train import train_tokenizer
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.runconfig import load_run_config, tokenizer_fields
from llmkit.train import loop, pretrain, step
from llmkit.train.optim import lr_at, param_groups

ROOT = Path(__file__).resolve().parents[1]

# Tiny shapes of each family, as overrides of a preset (2 layers, d_model 64)
FAMILIES = {
    "decoder": ("bpe", "tiny-llama-10m", dict(n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128)),
    "encoder": ("wordpiece", "tiny-bert-1m", dict(n_layer=2)),
    "encoder_decoder": ("unigram", "tiny-t5-1m", dict(n_layer=2)),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small gain nothing from a second thread, and on a busy machine OpenMP threads
    wait for each other: one thread ran a 100-step test 5x faster there (and gives the same numbers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- data -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory, docs_corpus) -> dict[str, Path]:
    """One data directory per tokenizer kind, made by the real `llmkit data tokenize` code from
    ``docs_corpus`` (conftest.py: one passage of the Python docs in 32 files; see test_each_family_overfits).
    """
    root = tmp_path_factory.mktemp("train-data")
    texts = list(python_docs_texts())
    dirs = {}
    for kind, vocab_size in (("bpe", 320), ("wordpiece", 320), ("unigram", 420)):
        tokenizer = train_tokenizer(texts[:40], kind, vocab_size)
        dirs[kind] = root / kind
        cwd = os.getcwd()
        os.chdir(docs_corpus.parent)  # the train/val split hashes the source as written: keep it the same every run
        try:
            tokenize_corpus([("docs", None)], tokenizer, dirs[kind], val_fraction=0.25, progress=False)
        finally:
            os.chdir(cwd)
        assert TokenDataset(dirs[kind]).n_tokens("val") > 200
    return dirs


def configs(family: str, data_dirs, out: Path, model: dict | None = None, **train) -> tuple[ModelConfig, TrainConfig]:
    """The tiny model of ``family`` (plus ``model`` overrides) and short-run settings (plus ``train``)."""
    kind, preset, overrides = FAMILIES[family]
    tokenizer = TokenDataset(data_dirs[kind]).tokenizer()
    fields = {**tokenizer_fields(tokenizer, preset, overrides), **overrides, **(model or {})}
    model_cfg = ModelConfig.from_name(preset, **fields)
    settings = dict(
        data=str(data_dirs[kind]), out_dir=str(out), steps=8, batch_size=8, block_size=32, lr=3e-3,
        warmup_steps=2, eval_interval=4, eval_batches=2, save_interval=4, log_interval=1, dtype="fp32",
        device="cpu",  # the guarantees below are CPU's: CUDA kernels may add in a different order per run
    )  # fmt: skip
    return model_cfg, TrainConfig(**{**settings, **train})


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / loop.METRICS).read_text().splitlines()]


def losses(out: Path, key: str = "train_loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(out) if key in r}


def unigram_entropy(data_dir: Path) -> float:
    """Entropy (nats) of the train split's token frequencies: the cross-entropy of the best predictor
    that ignores context, on the training stream itself."""
    ids = np.asarray(TokenDataset(data_dir).tokens("train"))
    p = np.bincount(ids) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# ---- schedule and parameter groups ----------------------------------------------------------
def test_lr_schedule_closed_form():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-3 * 1 / 11)  # warmup: lr * (step + 1) / (warmup + 1)
    assert lr_at(4, cfg) == pytest.approx(1e-3 * 5 / 11)
    assert lr_at(10, cfg) == pytest.approx(1e-3)  # peak at the end of warmup
    assert lr_at(60, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # cosine half way: the mean of lr and min_lr
    assert lr_at(35, cfg) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(500, cfg) == pytest.approx(1e-4)
    no_warmup = TrainConfig(steps=10, warmup_steps=0, lr=1.0, min_lr=0.0)
    assert lr_at(0, no_warmup) == 1.0 and lr_at(5, no_warmup) == pytest.approx(0.5)
    only_warmup = TrainConfig(steps=4, warmup_steps=4, lr=1.0, min_lr=0.0)
    assert [lr_at(s, only_warmup) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_weight_decay_only_on_matrices():
    model = build_model(ModelConfig.from_name("tiny-gpt-1m", n_layer=1))  # learned positions, tied head
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    decayed = [names[id(p)] for p in decay["params"]]
    assert decayed.count("embed.tokens.weight") == 1  # once, though tied to the head
    assert {"embed.positions.weight", "stack.layers.0.attn.q.weight"} <= set(decayed)
    assert {"stack.final_norm.weight", "stack.layers.0.attn.q.bias"} <= {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_activation_checkpointing_trains_as_without_it(dtype):
    """On CPU at <= 128 tokens steps use the math attention kernel; the blocks recomputed in backward
    must use it too (torch.utils.checkpoint refuses recomputed tensors of other shapes)."""
    from llmkit.objectives import Batch
    from llmkit.train.distributed import Dist

    env = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    cfg = ModelConfig.from_name("tiny-gpt-1m", vocab_size=97, d_model=32, n_layer=2, n_head=4, max_seq_len=64)
    ids = torch.randint(0, 97, (4, 33), generator=torch.Generator().manual_seed(0))
    batch = Batch({"input_ids": ids[:, :-1]}, ids[:, 1:])
    losses, weights = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        train_cfg = TrainConfig(block_size=32, dtype=dtype, device="cpu", activation_checkpointing=checkpointing)
        state = step.make_state(build_model(cfg), train_cfg, env)
        assert state.kernels is not None  # the math kernel, as the trainer chooses it here
        losses.append([float(step.train_step(state, [batch])) for _ in range(2)])
        weights.append(state.raw.lm_head.weight.detach().clone())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    torch.testing.assert_close(weights[0], weights[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_sparse_lookup_gradients_train_as_dense_ones(family, monkeypatch):
    """Large embedding tables take their lookup gradient as rows added into a gradient kept between
    steps (step.sparse_lookups): three AdamW steps with clipping give the weights dense gradients
    give (GPT, BERT), and the kept gradient is dense and zero after each step. A table tied to a head
    keeps torch's dense gradient (the head's is dense anyway)."""
    from llmkit.objectives import Batch
    from llmkit.train.distributed import Dist

    env = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    name = "tiny-gpt-1m" if family == "gpt" else "tiny-bert-1m"
    cfg = ModelConfig.from_name(name, vocab_size=97, d_model=32, n_layer=2, n_head=4, max_seq_len=64, dropout=0.0)
    monkeypatch.setattr(step, "SPARSE_LOOKUP_MIN_ROWS", 1)
    tied = build_model(cfg)
    assert all(k.param is not tied.embed.tokens.weight for k in step.sparse_lookups(tied))
    assert not tied.embed.tokens.sparse
    cfg = cfg.replace(tie_embeddings=False)
    ids = torch.randint(0, 97, (4, 17), generator=torch.Generator().manual_seed(0))
    batch = Batch({"input_ids": ids[:, :-1]}, ids[:, 1:] if family == "gpt" else ids[:, :-1])
    results = []
    for rows in (10**9, 1):  # threshold above the vocabulary (dense, torch's) or below it (sparse lookups)
        monkeypatch.setattr(step, "SPARSE_LOOKUP_MIN_ROWS", rows)
        torch.manual_seed(0)
        state = step.make_state(build_model(cfg), TrainConfig(block_size=16, device="cpu", grad_clip=0.5), env)
        table = state.raw.embed.tokens
        assert table.sparse == any(k.param is table.weight for k in state.kept_grads) == (rows == 1)
        losses = [float(step.train_step(state, [batch])) for _ in range(3)]
        if rows == 1:
            assert table.weight.grad is not None and not table.weight.grad.is_sparse
            assert not table.weight.grad.any()
        results.append((losses, [p.detach().clone() for p in state.raw.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_clipped_step_matches_torch_clip_grad_norm(fused, monkeypatch):
    """step.clip_grad_norm then AdamW (a kept lookup gradient read on its touched rows alone; the
    divisor handed to a fused AdamW as its grad_scale, or divided in place otherwise) moves the
    weights as torch.nn.utils.clip_grad_norm_ then the same AdamW, whether the norm exceeds max_norm
    (clipped) or not; the norm is torch's."""
    import copy

    from llmkit.train.distributed import Dist

    env = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    monkeypatch.setattr(step, "SPARSE_LOOKUP_MIN_ROWS", 90)  # the 97-row token table, not the 64 positions
    cfg = ModelConfig.from_name("tiny-bert-1m", vocab_size=97, d_model=32, n_layer=1, n_head=4, max_seq_len=64)
    model = build_model(cfg.replace(tie_embeddings=False))
    state = step.make_state(model, TrainConfig(block_size=16, device="cpu"), env)
    assert len(state.kept_grads) == 1
    kept = state.kept_grads[0]
    state.raw.embed.tokens(torch.tensor([[3, 5, 5, 9], [9, 11, 3, 2]])).sum().backward()
    rows = kept.touched()
    assert rows.tolist() == [2, 3, 5, 9, 11]
    generator = torch.Generator().manual_seed(0)
    for p in state.raw.parameters():
        if p.grad is None:
            p.grad = torch.randn(p.shape, generator=generator)
    grads = {n: p.grad.clone() for n, p in state.raw.named_parameters()}
    norm = torch.nn.utils.get_total_norm(list(grads.values()))
    start = copy.deepcopy(state.raw)
    # eps 1: the update lr * g / (|g| + 1) shows the gradients' scale (at eps 1e-8 a first step is lr * sign(g))
    adamw = {"lr": 1e-2, "eps": 1.0, "weight_decay": 0.01, "fused": fused or None, "foreach": None if fused else True}
    for max_norm in (float(norm) / 3, float(norm) * 3):
        reference = copy.deepcopy(start)
        for n, p in reference.named_parameters():
            p.grad = grads[n].clone()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
        torch.optim.AdamW(reference.parameters(), **adamw).step()
        state.raw.load_state_dict(start.state_dict())
        for n, p in state.raw.named_parameters():
            p.grad.copy_(grads[n])
        state.optimizer = torch.optim.AdamW(state.raw.parameters(), **adamw)
        torch.testing.assert_close(step.clip_grad_norm(state, [rows], max_norm), norm)
        if not fused:  # the gradients themselves are divided
            expected = grads["embed.tokens.weight"] / max(1.0, (float(norm) + 1e-6) / max_norm)
            torch.testing.assert_close(kept.param.grad, expected)
        state.optimizer.step()
        state.optimizer.grad_scale = None
        for (n, p), q in zip(state.raw.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=lambda m, n=n: f"{n}: {m}")
    kept.zero(rows)
    assert not kept.param.grad.any() and kept.rows == []


def test_global_norm_is_torchs():
    tensors = [torch.randn(37, 5), torch.randn(3), torch.randn(4, 4).t(), torch.randn(6, dtype=torch.bfloat16)]
    torch.testing.assert_close(step.global_norm(tensors), torch.nn.utils.get_total_norm(tensors).float())
    assert float(step.global_norm([])) == 0.0


@pytest.mark.slow
def test_compiled_training_matches_eager(data_dirs, tmp_path):
    """torch.compile (each Stack, in place) trains the same model: losses and weights agree to float tolerance."""
    eager = pretrain(*configs("decoder", data_dirs, tmp_path / "eager", steps=4, save_interval=4))
    compiled = pretrain(*configs("decoder", data_dirs, tmp_path / "compiled", steps=4, save_interval=4, compile=True))
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], abs=1e-4)
    a = checkpoint.read_weights(tmp_path / "eager" / checkpoint.WEIGHTS)
    b = checkpoint.read_weights(tmp_path / "compiled" / checkpoint.WEIGHTS)
    assert a.keys() == b.keys()  # compiling in place keeps the parameter names
    # and the values: after 4 AdamW steps the weights differ by < 1e-6 here (fused kernels add in another
    # order), while one step moves them by ~1e-3; the last step's update never shows in the losses above
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


# ---- training ------------------------------------------------------------------------------
# (family, steps, model overrides). The encoder takes RoPE: with learned absolute positions a BERT
# needs several times more steps before its attention finds the neighbouring tokens (the decoder
# has RoPE and T5 relative positions, which give that from the start); it is the trainer under test.
OVERFIT = [
    ("decoder", 100, {}),
    ("encoder", 200, {"pos": "rope"}),
    ("encoder_decoder", 100, {}),
]


@pytest.mark.parametrize("family,steps,model", OVERFIT, ids=[f for f, _, _ in OVERFIT])
def test_each_family_overfits(family, steps, model, data_dirs, tmp_path):
    out = tmp_path / "run"
    model_cfg, train_cfg = configs(
        family, data_dirs, out, model, steps=steps, batch_size=16, warmup_steps=10, min_lr=1e-4,
        eval_interval=steps, save_interval=steps, log_interval=10,
    )  # fmt: skip
    summary = pretrain(model_cfg, train_cfg)
    # No predictor that ignores context beats the unigram entropy H1 of the training stream (about
    # 3.6-3.9 nats here). Half a nat below it means the model uses context: it memorizes the passage.
    bound = unigram_entropy(Path(train_cfg.data)) - 0.5
    assert summary["train_loss"] < bound, (summary, bound)
    assert summary["val_loss"] < bound  # val holds the same passage
    assert summary["init_val_loss"] > summary["val_loss"] + 1.0
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))
    # the run directory: a loadable checkpoint with the data's tokenizer, train state, metrics, plot
    model = checkpoint.load(out)
    assert model.tokenizer is not None and model.tokenizer.vocab_size == model.config.vocab_size
    state = torch.load(out / loop.TRAIN_STATE, weights_only=True)
    assert state["step"] == steps and state["train_config"]["steps"] == steps
    records = read_metrics(out)
    assert records[0] == {"step": 0, "val_loss": summary["init_val_loss"], "val_ppl": summary["init_val_ppl"]}
    assert [r["step"] for r in records if "train_loss" in r] == list(range(10, steps + 1, 10))
    assert all(math.isfinite(r["tokens_per_s"]) and r["mfu"] > 0 for r in records if "train_loss" in r)
    assert (out / loop.LOSS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


RESUME = [("decoder", "fp32"), ("decoder", "bf16"), ("encoder", "fp32"), ("encoder_decoder", "bf16")]


@pytest.mark.parametrize("family,dtype", RESUME, ids=[f"{f}-{d}" for f, d in RESUME])
def test_kill_and_resume_is_bit_identical(family, dtype, data_dirs, tmp_path, monkeypatch):
    """8 steps straight vs. killed after step 6 (checkpoint at 4) and resumed: same weights and
    losses, bit for bit. Dropout is on, and masking / span noise draw randoms, so every source of
    randomness must be a function of the step."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    pretrain(*configs(family, data_dirs, straight, {"dropout": 0.1}, dtype=dtype))

    real_step = loop.train_step

    def dies_after_six(state, batches):
        if state.step == 6:
            raise KeyboardInterrupt  # the process is killed after step 6, the checkpoint is of step 4
        return real_step(state, batches)

    monkeypatch.setattr(loop, "train_step", dies_after_six)
    with pytest.raises(KeyboardInterrupt):
        pretrain(*configs(family, data_dirs, killed, {"dropout": 0.1}, dtype=dtype))
    monkeypatch.undo()
    assert torch.load(killed / loop.TRAIN_STATE, weights_only=True)["step"] == 4
    assert max(losses(killed)) == 6  # it logged steps past the checkpoint before dying

    summary = pretrain(*configs(family, data_dirs, killed, {"dropout": 0.1}, dtype=dtype), resume=True)
    assert summary["steps_this_run"] == 4
    a = checkpoint.read_weights(straight / checkpoint.WEIGHTS)
    b = checkpoint.read_weights(killed / checkpoint.WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(killed) == losses(straight)  # steps 5 and 6 were dropped from the log and redone
    assert losses(killed, "val_loss") == losses(straight, "val_loss")
    sa = torch.load(straight / loop.TRAIN_STATE, weights_only=True)["optimizer"]["state"]
    sb = torch.load(killed / loop.TRAIN_STATE, weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


# A run in a child process whose ``os.replace`` SIGKILLs it at the second save, just before the
# rename that puts the new checkpoint in place: the old copy is already moved aside, out_dir is gone.
_KILLED_MID_SAVE = """
import json, os, signal, sys
import torch
from llmkit.config import ModelConfig, TrainConfig
from llmkit.train import pretrain

torch.set_num_threads(1)
model_cfg, train_cfg = ModelConfig.from_dict(json.loads(sys.argv[1])), TrainConfig.from_dict(json.loads(sys.argv[2]))
out, real, saves = os.path.abspath(train_cfg.out_dir), os.replace, []

def replace(src, dst, *args, **kwargs):
    if os.path.abspath(dst) == out:
        saves.append(src)
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)

os.replace = replace
pretrain(model_cfg, train_cfg)
"""


def test_kill_9_between_the_renames_of_a_save_resumes_bit_identically(data_dirs, tmp_path):
    """Killed while saving step 8 (of 12, saves every 4) between moving the old checkpoint aside and
    renaming the new one in: --resume recovers the newest complete copy, continues, and ends with the
    weights of a run that was never killed; no leftovers remain."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    pretrain(*configs("decoder", data_dirs, straight, steps=12))
    model_cfg, train_cfg = configs("decoder", data_dirs, killed, steps=12)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    args = [json.dumps(model_cfg.to_dict()), json.dumps(train_cfg.to_dict())]
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_SAVE, *args], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not killed.exists() and len(list(tmp_path.glob(".killed.*"))) >= 2  # the copies sit aside

    summary = pretrain(model_cfg, train_cfg, resume=True)
    assert summary["steps_this_run"] == 4  # from the step-8 copy the save had finished writing
    a = checkpoint.read_weights(straight / checkpoint.WEIGHTS)
    b = checkpoint.read_weights(killed / checkpoint.WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(killed) == losses(straight)
    assert list(tmp_path.glob(".killed.*")) == []  # stale temporaries were removed
    checkpoint.load(killed)  # its manifest verifies


def test_resume_refuses_a_corrupted_checkpoint_unless_told(data_dirs, tmp_path):
    out = tmp_path / "run"
    pretrain(*configs("decoder", data_dirs, out, steps=2, save_interval=2, eval_interval=2))
    path = out / loop.TRAIN_STATE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte somewhere in the optimizer state
    path.write_bytes(bytes(data))
    with pytest.raises(LlmkitError, match=r"train_state\.pt: contents differ from the SHA-256"):
        pretrain(*configs("decoder", data_dirs, out, steps=4), resume=True)


def test_absurd_model_sizes_are_refused_before_building(data_dirs, tmp_path):
    with pytest.raises(LlmkitError, match=r"the model config: n_layer=100,000 is implausibly large"):
        pretrain(*configs("decoder", data_dirs, tmp_path / "run", {"n_layer": 100_000}))
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_data_settings(data_dirs, tmp_path):
    out = tmp_path / "run"
    pretrain(*configs("decoder", data_dirs, out, steps=2, save_interval=2, eval_interval=2))
    with pytest.raises(LlmkitError, match="seed=7 differs"):
        pretrain(*configs("decoder", data_dirs, out, steps=4, seed=7), resume=True)
    with pytest.raises(LlmkitError, match="already exists and is not empty"):
        pretrain(*configs("decoder", data_dirs, out, steps=4))
    with pytest.raises(LlmkitError, match="already finished 2 steps"):
        pretrain(*configs("decoder", data_dirs, out, steps=2), resume=True)


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(data_dirs, tmp_path, monkeypatch, capsys):
    """An inf loss injected at step 6: exit 2 with one line naming the step and what to try; the
    checkpoint of step 4 stays byte for byte as it was saved."""
    out = tmp_path / "run"
    model_cfg, train_cfg = configs("decoder", data_dirs, out, log_interval=2)
    config = tmp_path / "run.toml"
    config.write_text(toml_for(model_cfg, train_cfg))

    saved: dict[str, bytes] = {}
    real_save = loop.save_checkpoint

    def save_and_remember(state, out_dir, tokenizer, extra, card=None):
        real_save(state, out_dir, tokenizer, extra, card)
        saved.update({name: (out_dir / name).read_bytes() for name in (checkpoint.WEIGHTS, loop.TRAIN_STATE)})

    real_loss, calls = step.lm_loss, []

    def poisoned(logits, labels):
        loss = real_loss(logits, labels)
        if torch.is_grad_enabled():  # a training step, not an evaluation
            calls.append(1)
            if len(calls) == 6:
                return loss * math.inf
        return loss

    monkeypatch.setattr(loop, "save_checkpoint", save_and_remember)
    monkeypatch.setattr(step, "lm_loss", poisoned)
    assert main(["pretrain", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("llmkit pretrain: error: the training loss became inf")
    assert "loss became inf at step 6" in err and "checkpoint of step 4" in err and "lower --train.lr" in err
    assert torch.load(out / loop.TRAIN_STATE, weights_only=True)["step"] == 4
    for name, content in saved.items():
        assert (out / name).read_bytes() == content


def test_two_processes_match_one_with_the_same_global_batch(data_dirs, tmp_path):
    """torchrun --nproc-per-node 2 (gloo, CPU) with batch 4 each == one process with batch 8."""
    model_cfg, train_cfg = configs("decoder", data_dirs, tmp_path / "one", steps=6, batch_size=8, eval_interval=3)
    config = tmp_path / "run.toml"
    config.write_text(toml_for(model_cfg, train_cfg))
    assert main(["pretrain", "--config", str(config)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "llmkit", "pretrain"]
    command += ["--config", str(config), "--train.batch_size", "4", "--train.out_dir", str(tmp_path / "two")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys() == set(range(1, 7))
    assert all(abs(one[s] - two[s]) < 1e-5 for s in one), (one, two)
    val_one, val_two = losses(tmp_path / "one", "val_loss"), losses(tmp_path / "two", "val_loss")
    assert all(abs(val_one[s] - val_two[s]) < 1e-5 for s in val_one)
    assert torch.load(tmp_path / "two" / loop.TRAIN_STATE, weights_only=True)["world_size"] == 2


# ---- CLI -----------------------------------------------------------------------------------
def toml_for(model_cfg: ModelConfig, train_cfg: TrainConfig) -> str:
    """A [model] / [train] TOML file holding these configs (None fields left out)."""

    def value(v):
        return json.dumps(v)  # JSON scalars are TOML scalars (strings, numbers, true/false)

    model = "\n".join(f"{k} = {value(v)}" for k, v in model_cfg.to_dict().items() if v is not None)
    train = "\n".join(f"{k} = {value(v)}" for k, v in train_cfg.to_dict().items())
    return f"[model]\n{model}\n\n[train]\n{train}\n"


def test_config_precedence(data_dirs, tmp_path):
    """defaults < preset < the data's tokenizer < file < flags."""
    config = tmp_path / "run.toml"
    config.write_text(
        f'[model]\npreset = "tiny-llama-10m"\nn_layer = 3\nd_model = 128\n\n'
        f'[train]\ndata = "{data_dirs["bpe"]}"\nsteps = 50\nlr = 0.002\nwarmup_steps = 5\n'
    )
    model_cfg, train_cfg = load_run_config(config, {"n_layer": 1}, {"steps": 7})
    assert (model_cfg.n_layer, model_cfg.d_model, model_cfg.d_ff) == (1, 128, 704)  # flag, file, preset
    assert model_cfg.vocab_size == 320 and model_cfg.eos_token_id == 0  # from the data's tokenizer
    assert (train_cfg.steps, train_cfg.lr, train_cfg.batch_size) == (7, 0.002, 12)  # flag, file, default
    assert load_run_config(config, {"vocab_size": 512})[0].vocab_size == 512  # an explicit value wins


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "not found"),
        ("[model\npreset = 1", "not valid TOML"),
        ("[train]\nstepz = 3", "unknown train config field(s) stepz"),
        ('[model]\npreset = "tiny-gpt-1m"\nwidth = 3', "unknown model config field(s) width"),
        ("[optim]\nlr = 3", "unknown table or key optim"),
        ('[train]\nsteps = "many"', "steps='many' must be an integer"),
        ('[train]\ncompile = "yes"', "compile='yes' must be true or false"),
        ('[model]\npreset = "nope"', "unknown model preset 'nope'"),
    ],
)
def test_config_errors_are_one_line(content, message, tmp_path, capsys):
    config = tmp_path / "run.toml"
    if content is not None:
        config.write_text(content)
    assert main(["pretrain", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("name,family", [("tiny-decoder", "decoder"), ("tiny-encoder", "encoder"),
                                         ("tiny-encoder-decoder", "encoder_decoder")])  # fmt: skip
def test_example_configs_parse(name, family):
    model_cfg, train_cfg = load_run_config(ROOT / "configs" / f"{name}.toml")
    assert model_cfg.family == family
    assert train_cfg.block_size <= model_cfg.max_seq_len and train_cfg.data


@pytest.mark.slow
def test_example_decoder_config_runs(data_dirs, tmp_path):
    """configs/tiny-decoder.toml end to end through the CLI, shortened."""
    out = tmp_path / "run"
    flags = ["--train.data", str(data_dirs["bpe"]), "--train.out_dir", str(out), "--train.steps", "20"]
    flags += ["--train.eval_interval", "10", "--train.warmup_steps", "5", "--train.block_size", "64"]
    flags += ["--train.device", "cpu"]
    assert main(["pretrain", "--config", str(ROOT / "configs" / "tiny-decoder.toml"), *flags]) == 0
    assert (out / loop.TRAIN_STATE).is_file()
    shutil.rmtree(out)


# ---- model card ----------------------------------------------------------------------------
def test_a_run_writes_a_model_card_with_its_data_steps_tokens_and_losses(data_dirs, tmp_path):
    model_cfg, train_cfg = configs("decoder", data_dirs, tmp_path / "run", steps=8, save_interval=8)
    summary = pretrain(model_cfg, train_cfg)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "Pretrained from scratch by `llmkit pretrain` (causal language modelling" in card
    assert "| steps | 8 |" in card and f"| tokens seen | {summary['tokens']:,} |" in card
    assert summary["tokens"] == 8 * 8 * 32  # steps x batch x block
    assert f"| validation loss | {summary['val_loss']:,.4g} |" in card
    assert f"| train loss | {summary['train_loss']:,.4g} |" in card
    # the data directory's one source (the "docs" folder) is listed with its share; its license is unknown
    assert "- `docs` (100.0% of tokens): unknown" in card
    params = sum(p.numel() for p in build_model(model_cfg).parameters())
    assert f"| parameters | {params:,} |" in card


def test_pretrain_names_the_model_and_warns_about_a_long_warmup(data_dirs, tmp_path, capsys, monkeypatch):
    """--name is recorded in the checkpoint: inspect shows it, serve uses it as the model id, eval's folder
    and the loss plot carry it, the plot with the true parameter count; a warmup of 80% of the run is warned of."""
    from llmkit.cli import main
    from llmkit.evaluate.checkpoint_eval import default_out
    from llmkit.evaluate.tasks import load_task
    from llmkit.inference.loading import model_name
    from llmkit.units import human_count

    model_cfg, train_cfg = configs("decoder", data_dirs, tmp_path / "model", steps=5, warmup_steps=4, eval_interval=5,
                                   save_interval=5)  # fmt: skip
    config = tmp_path / "tiny-run.toml"
    config.write_text(toml_for(model_cfg, train_cfg))
    titles = []
    real_plot = loop.plot_loss
    monkeypatch.setattr(
        loop, "plot_loss", lambda records, path, title: titles.append(title) or real_plot(records, path, title)
    )
    assert main(["pretrain", "--config", str(config), "--name", "docs lm"]) == 0
    err = capsys.readouterr().err
    assert "warning: warmup_steps 4 is 80% of the 5-step run" in err and "--train.warmup_steps 1" in err
    out = tmp_path / "model"
    params = sum(p.numel() for p in checkpoint.load(out).parameters())
    assert titles[-1] == f"docs lm: {human_count(params)} parameters, {human_count(5 * 8 * 32)} tokens"
    assert model_name(out) == "docs lm" and checkpoint.read_json(out / checkpoint.CONFIG)["name"] == "docs lm"
    assert main(["inspect", str(out)]) == 0
    assert "  name: docs lm" in capsys.readouterr().out
    assert default_out(load_task("sst2"), out).name == "sst2-docs-lm"
    served = {}
    monkeypatch.setattr("llmkit.cli.serve.serve_on", lambda server, sock: served.update(app=server.config.app))
    assert main(["serve", str(out), "--port", "0"]) == 0
    from fastapi.testclient import TestClient

    # the served id is the name inspect shows; the one-word form is an alias
    client = TestClient(served["app"], base_url="http://127.0.0.1:8000")  # the Host a loopback server answers
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids[:2] == ["docs lm", "docs-lm"]  # then the embedder, when MiniLM is installed
    # without --name the run is named after its config file, not the preset (whose size it may not have)
    assert (
        main(["pretrain", "--config", str(config), "--train.warmup_steps", "1", "--train.out_dir", str(tmp_path / "b")])
        == 0
    )
    assert "warning" not in capsys.readouterr().err and model_name(tmp_path / "b") == "tiny-run"


def test_training_keeps_freed_host_memory_for_the_next_step():
    """In a fresh process glibc maps a 64 MB tensor anew each time (one page fault per 4 KiB page);
    inside host_memory.keep_freed_memory a freed one's pages serve the next (no faults). A
    subprocess: what earlier tests left in this process's heap would decide the first figure."""
    from llmkit.train import host_memory

    if not host_memory.supported():
        pytest.skip("malloc tuning applies to glibc only")
    script = """
import resource, torch
from llmkit.train import host_memory
def faults():
    torch.ones(16 * 2**20).sum()  # allocate, touch and free once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
outside = faults()
with host_memory.keep_freed_memory() as kept:
    inside = faults()
print(kept, outside, inside)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    kept, outside, inside = out[0] == "True", int(out[1]), int(out[2])
    assert kept and inside < 1000 < 8000 < outside, (outside, inside)
