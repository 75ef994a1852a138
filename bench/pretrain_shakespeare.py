"""Pretraining speed and quality: nanoGPT's shakespeare_char CPU run, with llmkit's training step.

The run (nanoGPT README, "I only have a macbook"): a character-level GPT of 4 layers, 4 heads, 128
wide, block 64, batch 12, no dropout, 2000 iterations; AdamW lr 1e-3 with 100 warmup steps and
cosine decay to 1e-4 at 2000, beta2 0.99, weight decay 0.1, gradient clipping 1.0; the first 90%
of the characters train, the last 10% validate. The model is nanoGPT's (LayerNorm and linears
without bias, exact GELU, tied head) with rotary positions (``--pos rope``, the default) instead
of a learned table; ``--pos learned`` runs nanoGPT's model exactly.

It prints the median ms per iteration, tokens/s and MFU (against a matmul peak measured here) of
llmkit's step (``llmkit.train.make_state`` + ``train_step``: bf16 autocast, torch.compile, fused
AdamW, the math attention kernel at this length on CPU, no host sync; compiling is outside the
median), the same for a plain fp32 PyTorch loop of the same model in the same process (its steps
interleaved with llmkit's first ones, so both see the machine at the same speed), and the
train/val loss at 500, 1000 and 2000 iterations (val: every window of the split, and nanoGPT's
estimate from 200 random batches; train: 200 fixed random batches), computed by a fresh eager copy
of the model so the compiled training path cannot bias its own score. Reference measured on this
machine for nanoGPT itself: 45 ms/iteration, val loss 1.8857 at 2000.

    python bench/pretrain_shakespeare.py [--data DIR] [--iters 2000] [--baseline-iters 300] [--no-compile]
                                         [--pos rope|learned]

The data is the repository's data/tinyshakespeare/input.txt.gz (karpathy/char-rnn's input.txt,
gzip'd; see its SOURCE.md); --data DIR reads DIR/input.txt or DIR/input.txt.gz instead.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llmkit.config import ModelConfig, TrainConfig
from llmkit.models import build_model
from llmkit.objectives import Batch, lm_loss
from llmkit.train import flops_per_token, make_state, train_step
from llmkit.train.distributed import Dist
from llmkit.train.optim import lr_at, param_groups, set_lr
from llmkit.train.step import measure_peak_flops

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "tinyshakespeare"
BLOCK, BATCH = 64, 12
CHECKPOINTS = (500, 1000, 2000)


def load_chars(directory: Path) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """input.txt (or input.txt.gz) as character ids: (train ids, val ids, vocabulary size); None when absent."""
    path = next((p for p in (directory / "input.txt", directory / "input.txt.gz") if p.is_file()), None)
    if path is None:
        return None
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(ids))
    return ids[:cut], ids[cut:], len(chars)


def model_config(vocab_size: int, pos: str = "rope") -> ModelConfig:
    """nanoGPT's GPT at this size (LayerNorm and linears without bias, exact GELU, tied head) with
    ``pos`` positions: "learned" is nanoGPT's table, "rope" rotates queries and keys instead."""
    return ModelConfig(
        family="decoder", name="shakespeare-char", vocab_size=vocab_size, d_model=128, n_layer=4, n_head=4,
        max_seq_len=BLOCK, pos=pos, norm="layernorm", activation="gelu", bias=False, tie_embeddings=True,
    )  # fmt: skip


def train_config(iters: int, dtype: str, compile: bool) -> TrainConfig:
    return TrainConfig(
        steps=iters, batch_size=BATCH, block_size=BLOCK, lr=1e-3, min_lr=1e-4, warmup_steps=min(100, iters),
        weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, dtype=dtype, compile=compile, device="cpu",
    )  # fmt: skip


def get_batch(data: torch.Tensor, generator: torch.Generator, batch: int = BATCH) -> Batch:
    """nanoGPT's sampling: ``batch`` windows at uniform random offsets; targets shifted by one."""
    offsets = torch.randint(len(data) - BLOCK, (batch,), generator=generator)
    x = torch.stack([data[o : o + BLOCK] for o in offsets.tolist()])
    y = torch.stack([data[o + 1 : o + 1 + BLOCK] for o in offsets.tolist()])
    return Batch({"input_ids": x}, y)


@torch.no_grad()
def split_loss(model, data: torch.Tensor, autocast, *, every_window: bool, seed: int = 0) -> float:
    """Mean loss per token: over every non-overlapping window (val) or 200 fixed random batches (train)."""
    model.eval()
    if every_window:
        n = (len(data) - 1) // BLOCK
        starts = torch.arange(n) * BLOCK
        batches = [
            Batch({"input_ids": torch.stack([data[s : s + BLOCK] for s in chunk.tolist()])},
                  torch.stack([data[s + 1 : s + 1 + BLOCK] for s in chunk.tolist()]))
            for chunk in starts.split(256)
        ]  # fmt: skip
    else:
        generator = torch.Generator().manual_seed(seed)
        batches = [get_batch(data, generator) for _ in range(200)]
    total = tokens = 0.0
    for batch in batches:
        with autocast:
            logits = model(**batch.inputs).logits
        total += float(lm_loss(logits, batch.labels)) * batch.labels.numel()
        tokens += batch.labels.numel()
    model.train()
    return total / tokens


def eager_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A new, uncompiled model with ``model``'s weights: the reference that scores it."""
    copy = build_model(model.config)
    copy.load_state_dict(model.state_dict())
    return copy


def run_llmkit(train, val, vocab, iters: int, dtype: str, compile: bool, seed: int, pos: str, plain) -> dict:
    """llmkit's step over ``iters`` iterations: ms per iteration and the losses at CHECKPOINTS. After each
    of the first ``plain.iters`` iterations the plain loop takes one step, so that both are timed over
    the same minutes and a change in the machine's speed hits both alike."""
    torch.manual_seed(seed)
    model = build_model(model_config(vocab, pos))
    cfg = train_config(iters, dtype, compile)
    state = make_state(model, cfg, Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    generator = torch.Generator().manual_seed(seed)
    times, losses = [], {}
    for it in range(1, iters + 1):
        batch = get_batch(train, generator)
        start = time.perf_counter()
        train_step(state, [batch])  # the loss stays on the device: no sync inside the timed step
        times.append(time.perf_counter() - start)
        if it <= plain.iters:
            plain.step()
        if it in CHECKPOINTS:
            scored = eager_copy(state.raw)
            losses[it] = (
                split_loss(scored, train, state.autocast, every_window=False),
                split_loss(scored, val, state.autocast, every_window=True),
                split_loss(scored, val, state.autocast, every_window=False),  # nanoGPT's estimate
            )
            print(f"  iter {it}: train loss {losses[it][0]:.4f}, val loss {losses[it][1]:.4f}", flush=True)
    return {"times": times, "losses": losses, "model": state.raw}


class PlainLoop:
    """A plain fp32 PyTorch loop of the same model, as nanoGPT's train.py runs on a CPU: AdamW (for-each),
    cross-entropy, clipping, zero_grad(set_to_none=True), the lr schedule set each step."""

    def __init__(self, train, vocab, iters: int, seed: int, pos: str) -> None:
        torch.manual_seed(seed)
        self.model = build_model(model_config(vocab, pos)).train()
        self.cfg = train_config(max(iters, 2000), "fp32", False)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, self.cfg.weight_decay), lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2)
        )
        self.train, self.iters, self.times = train, iters, []
        self.generator = torch.Generator().manual_seed(seed)

    def step(self) -> None:
        batch = get_batch(self.train, self.generator)
        start = time.perf_counter()
        set_lr(self.optimizer, lr_at(len(self.times), self.cfg))
        logits = self.model(**batch.inputs).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), batch.labels.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="directory with input.txt or input.txt.gz (default: %(default)s)",
    )
    parser.add_argument("--iters", type=int, default=2000, help="llmkit iterations (default: %(default)s)")
    parser.add_argument("--baseline-iters", type=int, default=300, help="plain-loop iterations (default: %(default)s)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the model (default: on)"
    )
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--pos", choices=("rope", "learned"), default="rope",
        help="positions: rotary (default) or nanoGPT's learned table (its model exactly)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if min(args.iters, args.baseline_iters) <= 10 or args.baseline_iters > args.iters:
        parser.error("the medians skip the first 10 iterations: need 10 < --baseline-iters <= --iters")
    loaded = load_chars(args.data)
    if loaded is None:
        print(f"skipped: no input.txt or input.txt.gz in {args.data} (see data/tinyshakespeare/SOURCE.md)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    train, val, vocab = loaded
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak, peak32 = (
        measure_peak_flops(torch.device("cpu"), dtype),
        measure_peak_flops(torch.device("cpu"), torch.float32),
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(train):,} train / {len(val):,} val "
        f"characters, vocab {vocab}, {args.pos} positions; matmul peak {peak / 1e9:.0f} GFLOP/s {args.dtype}, "
        f"{peak32 / 1e9:.0f} fp32"
    )

    print(
        f"llmkit train_step ({args.dtype}{', compiled' if args.compile else ''}), {args.iters} iterations, "
        f"the first {args.baseline_iters} each followed by a step of the plain fp32 PyTorch loop:",
        flush=True,
    )
    loop = PlainLoop(train, vocab, args.baseline_iters, args.seed, args.pos)
    result = run_llmkit(train, val, vocab, args.iters, args.dtype, args.compile, args.seed, args.pos, loop)
    plain = statistics.median(loop.times[10:])
    ours = statistics.median(result["times"][10:])
    ours_beside = statistics.median(result["times"][10 : args.baseline_iters])  # same minutes as the plain loop

    fpt = flops_per_token(result["model"], result["model"].config, BLOCK)
    tokens = BATCH * BLOCK

    def figures(seconds: float, peak_flops: float) -> str:
        flops = fpt * tokens / seconds
        return (
            f"{seconds * 1e3:.1f} ms/iteration (median), {tokens / seconds:,.0f} tokens/s, "
            f"{flops / 1e9:.0f} GFLOP/s = MFU {flops / peak_flops:.1%}"
        )

    print(f"plain fp32 loop: {figures(plain, peak32)} of the fp32 peak")
    print(f"llmkit        : {figures(ours, peak)} of the {args.dtype} peak (all {args.iters} iterations)")
    print(
        f"llmkit beside the plain loop (iterations 10-{args.baseline_iters}): {ours_beside * 1e3:.1f} ms/iteration, "
        f"{plain / ours_beside:.2f}x the plain loop's tokens/s"
    )
    for it, (train_loss, val_loss, val_estimate) in result["losses"].items():
        print(
            f"iter {it}: train loss {train_loss:.4f}, val loss {val_loss:.4f} "
            f"(200 random batches, as nanoGPT estimates it: {val_estimate:.4f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
