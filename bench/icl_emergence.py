"""In-context learning from scratch: a tiny decoder learns to read a label mapping off its prompt.

Every training sequence carries its own random mapping from items to labels and shows it only by
examples: "i17 C i3 A i40 C i17 C i3 A ...". A label is predictable only when its item appeared
earlier in the same sequence, so the model can lower its loss only by finding the earlier
occurrence and copying the label after it (the induction-head mechanism of Olsson et al., 2022,
which needs two layers). Nothing about any particular mapping can be memorised: each is drawn anew.

The model is llmkit's own decoder (``build_model``) trained with llmkit's step (``make_state`` +
``train_step``, as bench/pretrain_shakespeare.py does); the sequences are prompts rendered by
``llmkit.prompts`` and tokenized by the model's tokenizer. It is then evaluated by the code path of
`llmkit eval` (``llmkit.evaluate.evaluate_task``, label log-likelihood scoring) at 0, 1, 2, 4 and 8
shots on mappings never seen in training: for each, the query items and the demonstration pool share
one new mapping over ``EVAL_ITEMS`` items, demonstrations are drawn at random, and the model must
score the right label highest.

Expected: 0-shot near chance (1/4: the prompt says nothing about the mapping), then rising with the
shots as the query's item becomes likely to be among the demonstrations. The "copier" column is the
accuracy of a perfect copier on the very same prompts: right when the query's item is shown, a
uniform guess otherwise. A model that has learned to read its context tracks it (and can pass it at
1-2 shots by guessing a label it was shown, since a mapping may give two items the same label).

    python bench/icl_emergence.py [--steps 1500] [--batch-size 64] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import tokenizers
import torch
from tokenizers import models, pre_tokenizers

from llmkit.config import ModelConfig, TrainConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.evaluate.evaluator import build_prompts, evaluate_task
from llmkit.evaluate.readers import Item, TaskData
from llmkit.evaluate.tasks import DataSpec, Task
from llmkit.models import build_model
from llmkit.objectives import IGNORE_INDEX, Batch
from llmkit.prompts import Example, PromptFormat, continuation, render_prompt
from llmkit.train import make_state, train_step
from llmkit.train.distributed import Dist

# item tokens i0 .. i15: with 64 items the circuit formed later (8-shot accuracy about 0.79 after 1500 steps in
# trial runs, against 0.86 with 16), each item being seen a quarter as often
N_ITEMS = 16
LABELS = ("A", "B", "C", "D")
PAIRS = 16  # (item, label) pairs per training sequence: 32 tokens
EVAL_ITEMS = 4  # items in each evaluation mapping
EVAL_MAPPINGS = 25  # new mappings evaluated, each with its own pool and queries
QUERIES = 20  # queries per mapping
SHOTS = (0, 1, 2, 4, 8)

# "i17 C i3 A i17": one token per item and label, no cue or separator tokens, so the model copies the
# token after the previous occurrence of the current one (a plain induction head)
FORMAT = PromptFormat(template="{input}", answer_cue="", cue_separator="", answer_delimiter=" ", example_separator=" ")


def make_tokenizer() -> Tokenizer:
    """A word-level tokenizer: one id per item and label, split on whitespace."""
    words = ["<pad>", "<unk>", *LABELS, *(f"i{n}" for n in range(N_ITEMS))]
    backend = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(backend, {"pad": "<pad>", "unk": "<unk>"})


def model_config(vocab_size: int) -> ModelConfig:
    """Two layers (an induction head needs one to note the previous token and one to match on it), 128 wide."""
    return ModelConfig(
        family="decoder", name="icl-tiny", vocab_size=vocab_size, d_model=128, n_layer=2, n_head=4,
        max_seq_len=2 * PAIRS, pos="learned", norm="layernorm", activation="gelu", bias=False, pad_token_id=0,
    )  # fmt: skip


def training_text(rng: random.Random) -> str:
    """One sequence: a fresh mapping over 2-8 random items, and PAIRS examples of it in random order,
    rendered as the prompt of the last one followed by its answer."""
    items = rng.sample(range(N_ITEMS), rng.randint(2, 8))
    mapping = {i: rng.choice(LABELS) for i in items}
    pairs = [Example(f"i{i}", mapping[i]) for i in (rng.choice(items) for _ in range(PAIRS))]
    return render_prompt(FORMAT, pairs[:-1], pairs[-1].input) + continuation(FORMAT, pairs[-1].answer)


def training_batch(tokenizer: Tokenizer, rng: random.Random, size: int) -> Batch:
    """Sequences shifted by one; a loss on the label positions only (the items are random draws)."""
    ids = torch.tensor(tokenizer.encode_batch([training_text(rng) for _ in range(size)]))  # (B, 2 * PAIRS)
    labels = ids[:, 1:].clone()
    labels[:, 1::2] = IGNORE_INDEX  # targets at odd input positions are items
    return Batch({"input_ids": ids[:, :-1]}, labels)


def eval_task(seed: int) -> tuple[Task, TaskData]:
    """A new mapping over EVAL_ITEMS items: a pool of 25 demonstrations per item and QUERIES queries."""
    rng = random.Random(f"eval:{seed}")
    items = rng.sample(range(N_ITEMS), EVAL_ITEMS)
    mapping = {f"i{i}": rng.choice(LABELS) for i in items}
    pool = [Example(item, label, label) for item, label in mapping.items() for _ in range(25)]
    queries = [rng.choice(list(mapping)) for _ in range(QUERIES)]
    data = TaskData([Item(n, q, (mapping[q],), mapping[q]) for n, q in enumerate(queries)], pool)
    task = Task(
        name=f"mapping-{seed}", kind="classification", prompt=FORMAT, data=DataSpec(Path("<in memory>"), "jsonl"),
        metrics=("accuracy", "macro_f1"), labels={label: label for label in LABELS}, selection="random", seed=seed,
    )  # fmt: skip
    return task, data


def copier_accuracy(model, task: Task, data: TaskData, k: int) -> float:
    """Accuracy of a perfect copier on the evaluator's own prompts (rebuilt with the same seeds): right
    when the query's item is among the demonstrations shown, a uniform guess otherwise."""
    prompts = build_prompts(model, task, data, k, "loglikelihood")
    seen = [any(e.input == item.input for e in p.examples) for p, item in zip(prompts, data.items, strict=True)]
    return sum(1.0 if s else 1 / len(LABELS) for s in seen) / len(seen)


def evaluate(model) -> list[tuple[int, float, float, float, int]]:
    """(shots, accuracy, macro-F1, perfect copier's accuracy, n) over EVAL_MAPPINGS new mappings."""
    model.eval()
    rows = {k: [0.0, 0.0, 0.0, 0] for k in SHOTS}
    for seed in range(EVAL_MAPPINGS):
        task, data = eval_task(seed)
        report = evaluate_task(model, task, data, SHOTS, batch_size=128, progress=False, model_name="icl-tiny")
        for result in report.results:
            row = rows[result.shots]
            row[0] += result.metrics["accuracy"] * result.n
            row[1] += result.metrics["macro_f1"] * result.n
            row[2] += copier_accuracy(model, task, data, result.shots) * result.n
            row[3] += result.n
    model.train()
    return [(k, acc / n, f1 / n, ceiling / n, n) for k, (acc, f1, ceiling, n) in rows.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the data (default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: at this size a second thread only adds synchronisation, and on a "
        "busy 2-core machine it made each step 6x slower)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = make_tokenizer()
    model = build_model(model_config(tokenizer.vocab_size))
    model.tokenizer = tokenizer  # the evaluator tokenizes prompts with the model's own tokenizer
    # no weight decay: every sequence is new, so there is nothing to overfit
    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, block_size=2 * PAIRS - 1, lr=args.lr, min_lr=args.lr / 10,
        warmup_steps=100, weight_decay=0.0, beta2=0.99, dtype="fp32", device="cpu",
    )  # fmt: skip
    state = make_state(model, cfg, Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; decoder {n_params / 1e6:.2f}M parameters "
        f"(2 layers, d_model 128); {args.steps} steps of {args.batch_size} sequences of {PAIRS} (item, label) "
        f"pairs, {N_ITEMS} items, {len(LABELS)} labels, a new mapping per sequence",
        flush=True,
    )
    rng = random.Random(args.seed)
    start = time.perf_counter()
    before = evaluate(model)
    for step in range(1, args.steps + 1):
        loss = train_step(state, [training_batch(tokenizer, rng, args.batch_size)])
        if step % 250 == 0 or step == args.steps:
            print(f"  step {step}: label loss {float(loss):.3f} nats ({time.perf_counter() - start:.0f} s)", flush=True)
    after = evaluate(model)
    print(
        f"\nlabel log-likelihood scoring (llmkit.evaluate, as `llmkit eval`), {EVAL_MAPPINGS} new mappings over "
        f"{EVAL_ITEMS} items x {QUERIES} queries; chance {1 / len(LABELS):.2f}"
    )
    print(f"{'shots':>5}  {'untrained acc':>13}  {'trained acc':>11}  {'macro-F1':>8}  {'copier':>6}  {'n':>4}")
    for (k, acc0, _, _, _), (_, acc, f1, ceiling, n) in zip(before, after, strict=True):
        print(f"{k:>5}  {acc0:>13.3f}  {acc:>11.3f}  {f1:>8.3f}  {ceiling:>6.3f}  {n:>4}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
