"""The real-model part of bench/domain_adaptation.py (``--real``): SmolLM2-135M-Instruct as it is, and
continued on the medical training part by ``llmkit finetune`` kind "continue", in full and with LoRA;
perplexity of each on held-out medical and general text (what it learns, and what it forgets).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domain_corpus import assemble_corpora, corpus_file, first_documents

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from domain_adaptation import Settings


# ---- the real model: SmolLM2 continued on medical text ----------------------------------------
@dataclass
class RealSettings:
    """SmolLM2-135M-Instruct continued on the medical training part: full (every weight) and LoRA."""

    # sized for 2 shared CPU cores (a step of 4 x 64 tokens through 135M parameters takes 5-10 s there);
    # on a GPU, a few hundred steps of 8 x 512 take minutes
    steps: int = 60
    batch_size: int = 4
    block_size: int = 64
    full_lr: float = 1e-4  # continued pretraining at small scale: 1e-4 to 3e-4 (Trainer's fine-tuning default: 5e-5)
    lora_lr: float = 1e-3  # LoRA takes ~10x the full learning rate
    lora_rank: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])
    pool_tokens: int = 100_000
    eval_docs: int = 8  # held-out documents per text
    eval_doc_tokens: int = 256  # the first tokens of each, scored as one window
    threads: int = 2


REAL_QUICK = {
    "steps": 2,
    "batch_size": 1,
    "block_size": 32,
    "pool_tokens": 5_000,
    "eval_docs": 2,
    "eval_doc_tokens": 32,
}


def document_perplexity(model, tokenizer, docs: list[str], doc_tokens: int) -> dict[str, float]:
    """Perplexity over documents scored one by one (the first ``doc_tokens`` of each in one window,
    ``llmkit.evaluate.perplexity``), pooled per token: exp(sum of NLL / scored tokens)."""
    from llmkit.evaluate.perplexity import perplexity

    nll, tokens = 0.0, 0
    for doc in docs:
        ids = tokenizer.encode(doc, add_special_tokens=False)[:doc_tokens]
        result = perplexity(model, ids, progress=False)
        nll += result.nll * result.tokens
        tokens += result.tokens
    return {"perplexity": math.exp(nll / tokens), "tokens": tokens}


def run_real(out: Path, base: Path, real: RealSettings, settings: Settings) -> dict[str, Any]:
    """SmolLM2 as it is, continued on medical text in full and with LoRA (``llmkit finetune`` kind
    continue), each scored on held-out medical and general text."""
    import torch

    from llmkit import checkpoint
    from llmkit.config import TrainConfig
    from llmkit.data.shards import tokenize_corpus
    from llmkit.finetune.config import FinetuneConfig, MethodConfig, ModelTable, TaskConfig
    from llmkit.finetune.run import finetune

    if not (base / "config.json").is_file():
        raise LlmkitError(
            f"no checkpoint at {base}", "fetch it with `llmkit models get smollm2-135m-instruct` (or pass --model DIR)"
        )
    torch.set_num_threads(real.threads)
    assemble_corpora(out, settings)  # the same held-out split as the small models'
    model = checkpoint.load(base, dtype=torch.float32)
    tokenizer = model.tokenizer
    data = out / "real" / "medical-data"
    if not (data / "meta.json").is_file():
        tokenize_corpus(
            [(str(corpus_file(out, "medical", "train")), 1.0)],
            tokenizer,
            data,
            val_fraction=0.02,
            line_documents=True,
            max_tokens=real.pool_tokens,
            progress=False,
        )
    texts = {
        name: list(first_documents(corpus_file(out, name, "heldout"), 10**9))[: real.eval_docs]
        for name in ("medical", "general")
    }

    def score(m) -> dict[str, dict[str, float]]:
        return {name: document_perplexity(m, tokenizer, docs, real.eval_doc_tokens) for name, docs in texts.items()}

    report: dict[str, Any] = {"settings": dataclasses.asdict(real), "base": str(base), "runs": {}}
    started = time.perf_counter()
    report["runs"]["as it is"] = {"scores": score(model), "seconds": 0.0}
    del model
    for method, lr in (("full", real.full_lr), ("lora", real.lora_lr)):
        run = out / "real" / method
        train = TrainConfig(
            steps=real.steps,
            batch_size=real.batch_size,
            block_size=real.block_size,
            lr=lr,
            min_lr=lr / 10,
            warmup_steps=max(1, real.steps // 10),
            weight_decay=0.01,
            beta2=0.999,
            eval_interval=real.steps,
            eval_batches=4,
            save_interval=real.steps,
            log_interval=max(1, real.steps // 10),
            dtype="bf16",
            device="cpu",
            seed=0,
            out_dir=str(run),
        )
        method_cfg = MethodConfig(
            name=method, rank=real.lora_rank, alpha=2.0 * real.lora_rank, target_modules=list(real.lora_targets)
        )
        cfg = FinetuneConfig(
            ModelTable(init_from=str(base)), TaskConfig(kind="continue", data=str(data)), method_cfg, train
        )
        t0 = time.perf_counter()
        summary = finetune(cfg)
        seconds = time.perf_counter() - t0
        best = json.loads((run / "best" / "best.json").read_text())
        if best["step"] != real.steps:
            print(f"note: {method}'s best medical val loss was at step {best['step']}, not the last", flush=True)
        tuned = checkpoint.load(run / "best", dtype=torch.float32)  # LoRA: the adapter merged into the base
        report["runs"][method] = {
            "scores": score(tuned),
            "seconds": round(seconds, 1),
            "train_seconds": round(summary["seconds"], 1),
            "tokens": summary["tokens"],
            "medical_val_loss": [summary["init_val_loss"], summary["val_loss"]],
            "best_step": best["step"],
            "lr": lr,
        }
        del tuned
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def render_real(report: dict[str, Any]) -> str:
    lines = ["| SmolLM2-135M-Instruct | medical held-out | general held-out | training time |", "|---|---:|---:|---:|"]
    base = report["runs"]["as it is"]["scores"]
    for name, run in report["runs"].items():
        parts = []
        for text in ("medical", "general"):
            ppl = run["scores"][text]["perplexity"]
            change = "" if name == "as it is" else f" ({ppl / base[text]['perplexity'] - 1:+.1%})"
            parts.append(f"{ppl:.2f}{change}")
        label = name if name == "as it is" else f"continued, {name} (lr {run['lr']:g})"
        lines.append(f"| {label} | {parts[0]} | {parts[1]} | {run['seconds']:.0f} s |")
    return "\n".join(lines)
