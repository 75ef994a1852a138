"""Quantization quality: file size and validation perplexity of one pretrained model in every format.

The model (default: the quickstart's, runs/quickstart/model, made by `make quickstart`) is quantized
with ``llmkit.quantize_checkpoint.quantize_checkpoint`` (what `llmkit quantize` runs) to fp16, bf16, int8
and int4 with groups of 32, 64 and 128, plus int8 and int4/64 with the token embeddings kept in fp32,
to show what quantizing the table buys. Each result is loaded with ``llmkit.load`` and evaluated by
the training loop's own ``evaluate`` (llmkit.train) on the same validation batches of the data
directory: the quickstart's seed, batch and block size, ``--eval-batches`` batches. Evaluation runs
without autocast, so each model computes in the dtype it loads in (fp16/bf16 for the casts; fp32
activations for int8/int4, whose weights run through torch's CPU kernels).

size = model.safetensors of the format / model.safetensors of the fp32 checkpoint;
ppl change = perplexity / fp32 perplexity - 1. Evaluation batches are many rows, so they run the
dequantize-then-F.linear reference path; the last column compares torch's CPU kernels (the decoding
path, one row) with it: the largest logit difference over 64 one-token inputs.

    .venv/bin/python bench/quantize_perplexity.py                  # the table in docs/benchmarks.md
    .venv/bin/python bench/quantize_perplexity.py --model DIR --data DIR --eval-batches 20
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from llmkit import checkpoint
from llmkit.config import TrainConfig
from llmkit.data.datasets import TokenDataset
from llmkit.objectives import make_objective
from llmkit.quantize import QuantSpec, use_kernels
from llmkit.quantize_checkpoint import quantize_checkpoint
from llmkit.train import TrainState, evaluate
from llmkit.train.distributed import Dist
from llmkit.train.loop import perplexity

# (label, spec); None: the fp32 checkpoint itself
FORMATS: list[tuple[str, QuantSpec | None]] = [
    ("fp32", None),
    ("fp16", QuantSpec("fp16")),
    ("bf16", QuantSpec("bf16")),
    ("int8", QuantSpec("int8")),
    ("int4 g32", QuantSpec("int4", 32)),
    ("int4 g64", QuantSpec("int4", 64)),
    ("int4 g128", QuantSpec("int4", 128)),
    ("int8, embeddings fp32", QuantSpec("int8", embeddings=False)),
    ("int4 g64, embeddings fp32", QuantSpec("int4", 64, embeddings=False)),
]
TARGETS = {"int8": (0.27, 0.01), "int4 g64": (0.16, 0.05)}  # label -> (size ratio, ppl change) at most


@dataclass
class Row:
    label: str
    size: int
    ratio: float
    loss: float
    ppl: float
    kernel_gap: float | None  # max |logit kernel - logit reference|; None without quantized matrices


def main() -> None:
    args = parse_args()
    model_dir, data_dir = Path(args.model), Path(args.data)
    for path, what in ((model_dir / checkpoint.WEIGHTS, "model"), (data_dir / "val.bin", "data")):
        if not path.exists():
            sys.exit(f"{path} not found: make the quickstart {what} with `make quickstart` "
                     "(about two minutes), or pass --model and --data")  # fmt: skip
    torch.set_num_threads(args.threads)
    data = TokenDataset(data_dir)
    # the quickstart's evaluation settings (configs/quickstart.toml), fp32: no autocast
    train_cfg = TrainConfig(data=str(data_dir), batch_size=args.batch_size, block_size=args.block_size,
                            eval_batches=args.eval_batches, seed=args.seed, dtype="fp32", device="cpu")  # fmt: skip
    base_size = (model_dir / checkpoint.WEIGHTS).stat().st_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec in FORMATS:
            directory = model_dir
            if spec is not None:
                directory = Path(tmp) / label.replace(" ", "_").replace(",", "")
                print(quantize_checkpoint(model_dir, directory, spec).summary(), flush=True)
            rows.append(measure(label, directory, data, train_cfg, base_size))
            print(format_row(rows[-1], rows[0]), flush=True)
    print_table(rows, train_cfg, data)


def measure(label: str, directory: Path, data: TokenDataset, cfg: TrainConfig, base_size: int) -> Row:
    model = checkpoint.load(directory)
    objective = make_objective(model.config, cfg, model.tokenizer)
    env = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    state = TrainState(model=model, raw=model, optimizer=None, cfg=cfg, env=env)  # evaluation only
    loss = evaluate(state, data, objective)
    size = (directory / checkpoint.WEIGHTS).stat().st_size
    return Row(label, size, size / base_size, loss, perplexity(loss), kernel_gap(model, data))


@torch.no_grad()
def kernel_gap(model: torch.nn.Module, data: TokenDataset, tokens: int = 64) -> float | None:
    """Largest |logit| difference between torch's CPU kernels and the reference path, over one-token
    inputs (the decoding shape, the one the kernels run): the first ``tokens`` validation tokens."""
    if model.quantization is None or model.quantization.is_cast:
        return None
    ids = torch.from_numpy(data.tokens("val")[:tokens].astype("int64"))
    gap = 0.0
    for token in ids:
        fast = model(token.view(1, 1)).logits
        reference = use_kernels(model, False)(token.view(1, 1)).logits
        use_kernels(model, True)
        gap = max(gap, (fast - reference).abs().max().item())
    return gap


def format_row(row: Row, base: Row) -> str:
    change = row.ppl / base.ppl - 1
    gap = "" if row.kernel_gap is None else f"{row.kernel_gap:.1e}"
    target = TARGETS.get(row.label)
    verdict = ""
    if target is not None:
        met = row.ratio <= target[0] and change <= target[1]
        verdict = f"<= {target[0]}x, <= {target[1]:.0%}: {'met' if met else 'MISSED'}"
    return (f"| {row.label} | {row.size:,} | {row.ratio:.3f}x | {row.loss:.4f} | {row.ppl:.3f} | "
            f"{change:+.2%} | {gap} | {verdict} |")  # fmt: skip


def print_table(rows: list[Row], cfg: TrainConfig, data: TokenDataset) -> None:
    tokens = cfg.eval_batches * cfg.batch_size * cfg.block_size
    print(f"\ntorch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; {cfg.eval_batches} validation batches of {cfg.batch_size} x "
          f"{cfg.block_size} ({tokens:,} target tokens of {data.n_tokens('val'):,}), seed {cfg.seed}\n")  # fmt: skip
    print("| format | model.safetensors bytes | size vs fp32 | val loss | val ppl | ppl change | "
          "kernel vs reference, max abs logit | target |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(format_row(row, rows[0]))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/quickstart/model", help="fp32 llmkit checkpoint directory")
    p.add_argument("--data", default="runs/quickstart/data", help="data directory with val.bin (llmkit data tokenize)")
    p.add_argument("--eval-batches", type=int, default=80, help="validation batches (default 80: ~165k tokens)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per batch (the quickstart's 16)")
    p.add_argument("--block-size", type=int, default=128, help="tokens per row (the quickstart's 128)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the batches (the quickstart's 1337)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    return p.parse_args()


if __name__ == "__main__":
    main()
