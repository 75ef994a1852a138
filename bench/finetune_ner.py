"""Named-entity fine-tuning of the real all-MiniLM-L6-v2 on WNUT-17: llmkit next to transformers' Trainer.

Both sides fine-tune the same checkpoint (a token classifier on every position, as
BertForTokenClassification) on the first --train-examples sentences of data/ner/wnut17/train.conll.gz,
with each word's tag on its first sub-token (-100 on the rest), the same settings
(bench/finetune_common.py), in one process one after the other, and score entity-level
precision/recall/F1 (seqeval, default mode) on the test split (1,287 sentences), words cut off by
truncation counted as O on both sides. Prints examples/s, the ratio, the F1s and the machine load.
The Trainer batches sentences of similar length together (--hf-sampler group_by_length, its fastest
setting) or at random (its default); "random,group_by_length" runs both. llmkit batches them as the
Trainer's group_by_length does ([task] group_by_length) unless --llmkit-sampler random.

    python bench/finetune_ner.py [--train-examples 3394] [--epochs 3] [--batch 16] [--lr 5e-5]
                                 [--max-length 128] [--dtype fp32|bf16] [--sides hf,llmkit] [--work DIR]
                                 [--hf-sampler group_by_length,random] [--llmkit-sampler random]
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
    hf_train,
    llmkit_config,
    minilm_dir,
    run_sides,
    train_args,
    workdir,
)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "data/ner/wnut17/train.conll.gz"
TEST = ROOT / "data/ner/wnut17/test.conll"
LABELS = ["B-corporation", "B-creative-work", "B-group", "B-location", "B-person", "B-product",
          "I-corporation", "I-creative-work", "I-group", "I-location", "I-person", "I-product", "O"]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-examples", type=int, default=3394)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.06, help="share of the steps")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--seed", type=int, default=0)
    add_side_args(p)
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    args = p.parse_args()
    work = workdir(args.work)
    steps = max(1, round(args.train_examples * args.epochs / args.batch))
    warmup = round(args.warmup * steps)
    print(f"WNUT-17: first {args.train_examples} training sentences, {args.epochs} epoch(s) = {steps} steps of "
          f"{args.batch}, max length {args.max_length}, lr {args.lr}, warmup {warmup}, {args.dtype}; "
          f"test 1,287 sentences; torch threads {torch.get_num_threads()}")  # fmt: skip
    results = run_sides(args.sides, args.hf_sampler, lambda: run_llmkit(args, steps, warmup, work),
                        lambda sampler: run_hf(args, steps, warmup, work, sampler), "f1")  # fmt: skip
    for name, r in results.items():
        print(f"[{name}] test entity P {r['precision']:.4f} R {r['recall']:.4f} F1 {r['f1']:.4f}")


def run_llmkit(args, steps: int, warmup: int, work: Path) -> dict:
    from llmkit.finetune import finetune

    task = {"kind": "tokens", "train_file": str(TRAIN), "dev_file": str(TEST),
            "group_by_length": args.llmkit_sampler == "group_by_length",
            "max_train_examples": args.train_examples, "labels": LABELS}  # fmt: skip
    out = fresh(work / f"llmkit-wnut17-{args.dtype}")
    train = {"steps": steps, "batch_size": args.batch, "block_size": args.max_length, "lr": args.lr,
             "warmup_steps": warmup, "eval_interval": steps, "save_interval": steps, "log_interval": 50,
             "dtype": args.dtype, "seed": args.seed, "out_dir": str(out)}  # fmt: skip
    summary = finetune(llmkit_config(converted_minilm(work), task, train))
    return {"seconds": summary["seconds"], "examples_per_s": summary["examples_per_s"], **summary["eval"]}


def run_hf(args, steps: int, warmup: int, work: Path, sampler: str) -> dict:
    from transformers import AutoTokenizer, BertForTokenClassification, DataCollatorForTokenClassification

    from llmkit.finetune.data import align_labels, read_conll
    from llmkit.finetune.tasks.tokens import score_tokens

    src = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    index = {name: i for i, name in enumerate(LABELS)}
    train = read_conll(TRAIN)[: args.train_examples]
    test = read_conll(TEST)

    def features(sentences):
        enc = tokenizer([w for w, _ in sentences], is_split_into_words=True, truncation=True,
                        max_length=args.max_length)  # fmt: skip
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                 "labels": align_labels(enc.word_ids(i), [index[t] for t in tags])}
                for i, (_, tags) in enumerate(sentences)]  # fmt: skip

    torch.manual_seed(args.seed)
    model = BertForTokenClassification.from_pretrained(src, num_labels=len(LABELS))
    collator = DataCollatorForTokenClassification(tokenizer)
    settings = train_args(steps, args.batch, args.lr, warmup, args.seed, args.dtype, work / "hf-wnut17", sampler)
    out = hf_train(model, features(train), collator, settings)
    test_features = features(test)
    logits = hf_logits(model, test_features, collator)
    predicted = []
    for row, f, (words, _) in zip(logits, test_features, test, strict=True):
        first = torch.tensor(f["labels"]) != -100
        tags = [LABELS[i] for i in row.argmax(-1)[first].tolist()]
        predicted.append(tags + ["O"] * (len(words) - len(tags)))
    scores = score_tokens([tags for _, tags in test], predicted)
    return {"seconds": out["seconds"], "examples_per_s": out["examples_per_s"], **scores}


if __name__ == "__main__":
    main()
