"""Instruction tuning of the real SmolLM2-135M-Instruct with LoRA: llmkit next to transformers + peft.

One process, in order:
1. before: zero-shot SST-2 dev accuracy and DialogSum test ROUGE-L of the checkpoint, scored by
   `llmkit eval`'s code path (llmkit.evaluate.checkpoint_eval.evaluate_checkpoint; ``--*-limit N`` is
   `llmkit eval --limit N`: a seeded sample of N items, the same on every side);
2. llmkit: `llmkit finetune` with configs/finetune/instruct-mix-smollm2.toml (LoRA r=8, alpha 16,
   dropout 0, targets q/k/v/o; the FLAN-style mix of tasks/sst2.toml, tasks/dialogsum.toml and
   tasks/translation-fr-en.toml in the chat template, loss on the answers, packed), its sizes set by
   the flags, bf16 autocast; then the same scores of OUT/best (the adapter merged);
3. transformers + peft: the same checkpoint converted with `llmkit convert --to-hf` (bf16 weights,
   loaded in fp32 as llmkit loads them: identical values), peft LoraConfig with the same r / alpha /
   dropout / targets (q_proj, k_proj, v_proj, o_proj), trained on the llmkit run's own packed
   examples in the same order (its ``Examples.batch(step)``: identical token windows and loss masks),
   with the same AdamW (fused, betas, weight decay on matrices, clip 1.0), warmup + cosine schedule
   (llmkit.train.optim.lr_at), steps, batch and bf16 autocast, in a plain loop (chosen over the
   Trainer, not timed against it: a plain loop feeds the identical batches with no per-step work of
   its own, where the Trainer would collate and shuffle its own way and add its callbacks);
   then peft's merge_and_unload, save_pretrained, `llmkit convert --from-hf`, the same scores.
Only the adapters' random initialisation differs (each library's own, seeded).

Prints the sizes, one table (side, training examples/s over the optimizer steps alone, SST-2
accuracy, DialogSum ROUGE-L), "quality: ..." and "speed: ..." lines, and the machine load.
An example is one packed training window of --block tokens.

    python bench/instruct.py [--model models/smollm2-135m-instruct] [--steps 60] [--batch 4] [--block 512]
                             [--mix 1200] [--dev-limit 10] [--lr 2e-4] [--warmup 4]
                             [--sst2-limit 872] [--dialogsum-limit 30] [--threads 0] [--sides llmkit,peft]
                             [--work DIR]

The model: `make models` (or `llmkit models get smollm2-135m-instruct`) writes models/smollm2-135m-instruct.

Data licenses: SST-2 (data/sentiment/sst2) has no stated license (unclear; research use in practice);
DialogSum (data/dialogsum) is CC BY-NC-SA 4.0, non-commercial only; the Tatoeba fra-eng pairs
(data/translation/fra-eng) are CC BY 2.0 (attribution: tatoeba.org, manythings.org/anki).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_common import fresh, uptime, workdir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/finetune/instruct-mix-smollm2.toml"
SST2, DIALOGSUM = ROOT / "tasks/sst2.toml", ROOT / "tasks/dialogsum.toml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/smollm2-135m-instruct", help="the llmkit checkpoint to tune")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps")
    p.add_argument("--batch", type=int, default=4, help="packed windows per step")
    p.add_argument("--block", type=int, default=512, help="tokens per packed window")
    p.add_argument("--mix", type=int, default=1200, help="conversations in the mix (a third from each task)")
    p.add_argument("--dev-limit", type=int, default=10, help="held-out conversations per task for the dev loss")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=4, help="warmup steps")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--sst2-limit", type=int, default=872, help="SST-2 dev sentences scored (872: all)")
    p.add_argument("--dialogsum-limit", type=int, default=30, help="DialogSum test dialogues summarized (of 500)")
    p.add_argument("--eval-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="every side is scored in this dtype (the merged checkpoints are fp32)")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--sides", default="llmkit,peft")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    args = p.parse_args()
    model = Path(args.model)
    if not (model / "config.json").is_file():
        raise SystemExit(f"{model}: no llmkit checkpoint; `make models` (or `llmkit models get "
                         "smollm2-135m-instruct`) writes models/smollm2-135m-instruct")  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    work = workdir(args.work)
    sides = args.sides.split(",")
    print(f"SmolLM2 instruction tuning ({model}): LoRA r=8 alpha 16 on q/k/v/o, mix of {args.mix} conversations "
          f"(sst2, dialogsum, translation-fr-en; {args.dev_limit} each held out), packed into {args.block}-token "
          f"windows; {args.steps} steps of {args.batch} windows ({args.steps * args.batch * args.block:,} tokens), "
          f"lr {args.lr}, warmup {args.warmup}, cosine to 0, bf16 autocast; scored on {args.sst2_limit} SST-2 dev "
          f"sentences (0-shot, log-likelihood) and {args.dialogsum_limit} DialogSum test dialogues (0-shot, greedy) "
          f"in {args.eval_dtype}; torch threads {torch.get_num_threads()}; {uptime()}", flush=True)  # fmt: skip
    rows = {"before": {"examples_per_s": None, **scores(model, args, "before")}}
    examples = None
    if "llmkit" in sides:
        rows["llmkit"], examples = run_llmkit(model, args, work)
    if "peft" in sides:
        rows["peft"] = run_peft(model, args, work, examples)
    print_table(rows)


# ---- scoring ----------------------------------------------------------------------------------------
def scores(directory: Path, args, label: str) -> dict[str, float]:
    """SST-2 accuracy and DialogSum ROUGE-L of the checkpoint, both 0-shot, as `llmkit eval` computes them."""
    from llmkit.evaluate.checkpoint_eval import evaluate_checkpoint
    from llmkit.evaluate.tasks import load_task

    start = time.perf_counter()
    sst2 = evaluate_checkpoint(directory, load_task(SST2), [0], limit=args.sst2_limit, progress=False,
                               device="cpu", dtype=args.eval_dtype).results[0]  # fmt: skip
    dialog = evaluate_checkpoint(directory, load_task(DIALOGSUM), [0], limit=args.dialogsum_limit, progress=False,
                                 device="cpu", dtype=args.eval_dtype).results[0]  # fmt: skip
    out = {"accuracy": sst2.metrics["accuracy"], "rougeL": dialog.metrics["rougeL"]}
    print(f"[{label}] SST-2 accuracy {out['accuracy']:.4f} ({sst2.n} sentences), DialogSum ROUGE-L "
          f"{out['rougeL']:.4f} ({dialog.n} dialogue(s)), {time.perf_counter() - start:.0f} s, {uptime()}",
          flush=True)  # fmt: skip
    return out


# ---- llmkit -----------------------------------------------------------------------------------------
def finetune_config(model: Path, args, out: Path):
    """configs/finetune/instruct-mix-smollm2.toml with the bench's sizes (the `--TABLE.FIELD` flags)."""
    from llmkit.finetune.config import load_finetune_config

    flags = {
        "model": {"init_from": str(model)},
        "task": {"files": [str(SST2), str(DIALOGSUM), str(ROOT / "tasks/translation-fr-en.toml")],
                 "max_train_examples": args.mix, "dev_limit": args.dev_limit},
        "train": {"out_dir": str(out), "steps": args.steps, "batch_size": args.batch, "block_size": args.block,
                  "lr": args.lr, "warmup_steps": min(args.warmup, args.steps), "eval_interval": args.steps,
                  "save_interval": args.steps, "log_interval": max(args.steps // 10, 1), "dtype": "bf16",
                  "seed": args.seed, "device": "cpu"},
    }  # fmt: skip
    return load_finetune_config(CONFIG, flags)


def run_llmkit(model: Path, args, work: Path):
    """`llmkit finetune` (the body of llmkit.finetune.finetune, kept open so the peft side can take the
    run's packed examples), then the merged OUT/best scored."""
    from llmkit.finetune.run import FinetuneRun
    from llmkit.train import distributed

    cfg = finetune_config(model, args, fresh(work / "llmkit-instruct"))
    print(f"[llmkit] start, {uptime()}", flush=True)
    env = distributed.init(cfg.train.device)
    try:
        run = FinetuneRun(cfg, env, resume=False)
        summary = run.train()
    finally:
        distributed.cleanup()
    print(f"[llmkit] {summary['examples_per_s']:.3f} examples/s ({summary['seconds']:.0f} s for {args.steps} steps), "
          f"train loss {summary['train_loss']:.4f}, dev loss {summary['init_val_loss']:.4f} -> "
          f"{summary['val_loss']:.4f}, {uptime()}", flush=True)  # fmt: skip
    row = {"examples_per_s": summary["examples_per_s"], **scores(Path(cfg.train.out_dir) / "best", args, "llmkit")}
    return row, (run.task.train_examples, cfg)


# ---- transformers + peft ----------------------------------------------------------------------------
def run_peft(model: Path, args, work: Path, examples) -> dict:
    """The same training through transformers + peft in a plain loop; merged, converted back, scored."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.hf import from_hf, to_hf

    if examples is None:
        examples = llmkit_examples(model, args, work)
    data, cfg = examples
    method, train = cfg.method, cfg.train
    hf_base = work / "hf-base"
    if not hf_base.exists():
        to_hf(model, hf_base)
    torch.manual_seed(train.seed)
    hf = AutoModelForCausalLM.from_pretrained(hf_base, dtype=torch.float32)
    lora = LoraConfig(r=method.rank, lora_alpha=method.alpha, lora_dropout=method.dropout, bias="none",
                      target_modules=hf_targets(model, method.target_modules), task_type="CAUSAL_LM")  # fmt: skip
    peft_model = get_peft_model(hf, lora)
    peft_model.train()
    losses, seconds = train_plain(peft_model, data, train)
    examples_per_s = train.steps * train.batch_size / seconds
    print(f"[peft] {examples_per_s:.3f} examples/s ({seconds:.0f} s for {train.steps} steps), train loss "
          f"{losses[0]:.4f} -> {sum(losses[-5:]) / len(losses[-5:]):.4f} (last 5), {uptime()}", flush=True)  # fmt: skip
    merged = peft_model.merge_and_unload()
    merged_dir = fresh(work / "peft-merged-hf")
    merged.save_pretrained(merged_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (hf_base / name).is_file():
            shutil.copy(hf_base / name, merged_dir / name)
    converted = fresh(work / "peft-merged")
    from_hf(merged_dir, converted)
    return {"examples_per_s": examples_per_s, **scores(converted, args, "peft")}


def train_plain(model, data, cfg) -> tuple[list[float], float]:
    """``cfg.steps`` AdamW steps on ``data.batch(step)`` with llmkit's optimizer settings and schedule;
    (the per-step losses, the seconds of the steps alone)."""
    from llmkit.finetune.data import Examples
    from llmkit.objectives import lm_loss
    from llmkit.train.optim import lr_at, param_groups, set_lr

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr_at(0, cfg),
                                  betas=(cfg.beta1, cfg.beta2), fused=True)  # fmt: skip
    # llmkit's instruct batches carry the positions its LM head runs at (and those labels only), which
    # transformers' forward does not take: the same rows in the same order, through the plain collate
    plain = Examples(data.examples, data.pad_id, group_size=data.group_size)
    batches = [plain.batch(step, cfg.batch_size, seed=cfg.seed) for step in range(cfg.steps)]  # built before timing
    losses = []
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        set_lr(optimizer, lr_at(step, cfg))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(**batch.inputs).logits
        loss = lm_loss(logits, batch.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, time.perf_counter() - start


def hf_targets(model: Path, targets: list[str]) -> list[str]:
    """llmkit's target names (q, k, v, o) as transformers' last module names (q_proj, ...), via the
    converter's own module map, so both sides wrap the same layers."""
    from llmkit import checkpoint
    from llmkit.hf.modules import linear_module_map
    from llmkit.lora.targets import resolve_targets
    from llmkit.models import build_model

    cfg = checkpoint.load_config(model)
    meta = build_model(cfg, device="meta", init=False)
    chosen = resolve_targets(meta, targets, rank=1)
    mapping = linear_module_map(cfg)
    return sorted({mapping[name].rsplit(".", 1)[-1] for name in chosen})


def llmkit_examples(model: Path, args, work: Path):
    """peft alone (--sides peft): the packed examples llmkit's run would train on, without training."""
    from llmkit.finetune.run import FinetuneRun
    from llmkit.train import distributed

    cfg = finetune_config(model, args, fresh(work / "llmkit-examples"))
    env = distributed.init(cfg.train.device)
    try:
        run = FinetuneRun(cfg, env, resume=False)
        run.start()  # reads and encodes the task's data, builds the model; no step
    finally:
        distributed.cleanup()
    return run.task.train_examples, cfg


# ---- the table --------------------------------------------------------------------------------------
def print_table(rows: dict[str, dict]) -> None:
    print(f"\n{'side':<8} {'train examples/s':>17} {'SST-2 acc':>10} {'DialogSum ROUGE-L':>18}")
    for side, r in rows.items():
        speed = "-" if r["examples_per_s"] is None else f"{r['examples_per_s']:.3f}"
        print(f"{side:<8} {speed:>17} {r['accuracy']:>10.4f} {r['rougeL']:>18.4f}")
    before = rows["before"]
    for side in ("llmkit", "peft"):
        if side in rows:
            r = rows[side]
            print(f"{side} after - before: SST-2 {100 * (r['accuracy'] - before['accuracy']):+.1f} points, "
                  f"ROUGE-L {100 * (r['rougeL'] - before['rougeL']):+.1f} points")  # fmt: skip
    if "llmkit" in rows and "peft" in rows:
        a, b = rows["llmkit"], rows["peft"]
        print(f"quality: llmkit vs peft SST-2 {100 * (a['accuracy'] - b['accuracy']):+.1f} points, "
              f"ROUGE-L {100 * (a['rougeL'] - b['rougeL']):+.1f} points")  # fmt: skip
        print(f"speed: llmkit / peft {a['examples_per_s'] / b['examples_per_s']:.2f}x")
    print(uptime())


if __name__ == "__main__":
    main()
