"""`llmkit inspect`: architecture, parameters by component, context window, vocabulary, memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarize a model: architecture, parameters by component, context, vocab, memory",
        description="Summarize a named preset (e.g. gpt2, bert-base-uncased, flan-t5-base; built on the meta "
        "device, so nothing is allocated) or an llmkit checkpoint directory: architecture, parameters by "
        "component (tied weights counted once), context window, vocabulary, and the memory the weights take "
        "in fp32, bf16, int8 and int4.",
    )
    p.add_argument("model", metavar="MODEL", help="preset name or checkpoint directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.config import PRESETS, ModelConfig
    from llmkit.errors import LlmkitError
    from llmkit.models import build_model
    from llmkit.summary import human_bytes, human_count, summarize

    path = Path(args.model)
    stored = {}
    if path.is_dir():
        from llmkit import checkpoint

        cfg = checkpoint.load_config(path)
        quantization = checkpoint.load_quantization(path)
        stored = {"quantization": quantization.describe() if quantization is not None else "none"}
        stored.update(_stored_weights(path / checkpoint.WEIGHTS))
        tok = checkpoint.load_tokenizer(path, cfg)
        stored["tokenizer vocab"] = tok.vocab_size if tok is not None else None
    elif args.model in PRESETS:
        cfg = ModelConfig.from_name(args.model)
    else:
        raise LlmkitError(
            f"'{args.model}' is neither a checkpoint directory nor a preset", f"presets: {', '.join(PRESETS)}"
        )
    summary = summarize(build_model(cfg, "meta"))
    report = {
        "model": args.model,
        "architecture": summary.architecture(),
        "context_window": cfg.max_seq_len,
        "vocab_size": cfg.vocab_size,
        "parameters": summary.total,
        "parameters_by_component": summary.parameters,
        "weights_bytes": summary.weight_bytes(),
        **stored,
    }
    if "file size" in stored:
        report["file size vs fp32 weights"] = round(stored["file size"] / summary.weight_bytes()["fp32"], 4)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.model}: {human_count(summary.total)} parameters ({summary.total:,})")
    print(f"  {report['architecture']}")
    print(f"  context window {cfg.max_seq_len} tokens | vocabulary {cfg.vocab_size}")
    for key, value in stored.items():
        if key == "file size":
            value = f"{human_bytes(value)} ({report['file size vs fp32 weights']:.3f}x the fp32 weights)"
        elif key == "stored bytes by dtype":
            value = " | ".join(f"{dtype} {human_bytes(n)}" for dtype, n in value.items())
        print(f"  {key}: {value}")
    print(f"  {'component':<24}{'parameters':>16}{'share':>9}")
    for name, count in sorted(summary.parameters.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24}{count:>16,}{count / summary.total:>9.1%}")
    print("  weights memory: " + " | ".join(f"{d} {human_bytes(b)}" for d, b in summary.weight_bytes().items()))


def _stored_weights(path: Path) -> dict:
    """The dtypes in the safetensors file, the bytes each takes (quantized weights apart from their
    float scales and norms), and the file's size."""
    from llmkit.checkpoint import read_weights

    by_dtype: dict[str, int] = {}
    for tensor in read_weights(path).values():
        dtype = str(tensor.dtype).replace("torch.", "")
        by_dtype[dtype] = by_dtype.get(dtype, 0) + tensor.numel() * tensor.element_size()
    by_dtype = dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]))
    return {
        "stored dtype": ",".join(sorted(by_dtype)),
        "stored bytes by dtype": by_dtype,
        "file size": path.stat().st_size,
    }
