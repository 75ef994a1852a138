"""A real GGUF model in llmkit against transformers' own GGUF loading, on the same file.

For a model `llmkit models` knows (default Qwen2.5-Coder-0.5B-Instruct, the qwen2 architecture with
q/k/v biases; SmolLM2-135M-Instruct is the llama one), the pinned packages' GGUF (SHA-256
checked) is loaded by llmkit (``llmkit.gguf.convert.read_gguf``) and by
``transformers.AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``, both in fp32, and compared:
token ids on mixed lines (Python stdlib source, Unicode, whitespace runs), the max |diff| of the
logits over a few prompts, and greedy continuations token for token.

    .venv/bin/python bench/gguf_equivalence.py                          # Qwen2.5-Coder-0.5B-Instruct
    .venv/bin/python bench/gguf_equivalence.py --model smollm2-135m-instruct
    .venv/bin/python bench/gguf_equivalence.py --json results.json      # also write the figures

Exits 1 when the logits differ by more than --tolerance or any ids differ.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
import transformers

from llmkit.gguf import registry
from llmkit.gguf.convert import read_gguf
from llmkit.inference import generate

PROMPTS = [
    "def quicksort(arr):\n",
    "<|im_start|>user\nWrite a function that checks whether a number is prime.<|im_end|>\n<|im_start|>assistant\n",
    "The capital of France is",
    "# Unicode: café, 日本語, Ελληνικά 🙂\nclass Stack:\n    def __init__(self):\n",
]
UNICODE = [
    "Ça va? Grüße aus Köln — naïve façade", "Москва, Київ, Ελλάδα, ქართული", "東京都の天気は晴れです。北京欢迎你！서울",
    "emoji 🙂🚀👩‍👩‍👧 🇫🇷", "math ∑∫√∞ ≤ ≥ ≠ ±", "\u00a0nbsp\u2009thin\u200bzero", "tabs\t\tand\r\nCRLF", "        ",
    "1234567890 3.14159 1e-10 0xFF", "I'll we've they're SHE'S “quotes”",
]  # fmt: skip


def mixed_lines(n: int) -> list[str]:
    source = inspect.getsource(json.decoder) + inspect.getsource(textwrap) + inspect.getsource(inspect)
    lines = source.splitlines() + UNICODE
    return (lines * (n // len(lines) + 1))[:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", choices=list(registry.MODELS))
    parser.add_argument("--lines", type=int, default=1000, help="mixed text lines for the tokenizer check")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |logit diff| allowed")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()
    model = registry.known(args.model)
    with tempfile.TemporaryDirectory(prefix="gguf-eq-") as tmp:
        path = registry.gguf_file(model, Path(tmp))  # joins multi-part files under tmp, checks SHA-256
        start = time.perf_counter()
        ours, _ = read_gguf(path)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        theirs = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        their_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        t_theirs = time.perf_counter() - start
    theirs.eval()
    report: dict = {
        "model": model.name,
        "file_sha256": model.sha256,
        "load_s": {"llmkit": t_ours, "transformers": t_theirs},
    }

    # tokenizer: every line's ids
    lines = mixed_lines(args.lines)
    expected = their_tok(lines)["input_ids"]
    mismatched = [line for line, ids in zip(lines, expected, strict=True) if ours.tokenizer.encode(line) != ids]
    report["tokenizer"] = {"lines": len(lines), "mismatched": len(mismatched), "first_mismatch": mismatched[:1]}

    # logits and greedy continuations per prompt
    diffs, greedy_same = [], []
    for prompt in PROMPTS:
        ids = ours.tokenizer.encode(prompt)
        with torch.no_grad():
            diff = (ours(torch.tensor([ids])).logits - theirs(torch.tensor([ids])).logits).abs().max().item()
            hf_out = theirs.generate(
                torch.tensor([ids]), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False
            )
        mine = generate(ours, ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)[0].token_ids
        diffs.append(diff)
        greedy_same.append(mine == hf_out[0, len(ids) :].tolist())
        print(f"prompt {prompt[:40]!r}: max |logit diff| {diff:.3g}, greedy {args.new_tokens} tokens identical: "
              f"{greedy_same[-1]}\n  llmkit: {ours.tokenizer.decode(mine)!r}")  # fmt: skip
    report["max_abs_logit_diff"] = max(diffs)
    report["greedy_identical"] = greedy_same
    print(
        f"{model.name}: tokenizer ids equal on {len(lines) - len(mismatched)}/{len(lines)} lines, max |logit diff| "
        f"{max(diffs):.3g} over {len(PROMPTS)} prompts, greedy identical on {sum(greedy_same)}/{len(PROMPTS)}; "
        f"load {t_ours:.1f} s (llmkit) vs {t_theirs:.1f} s (transformers)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    ok = max(diffs) <= args.tolerance and not mismatched and all(greedy_same)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
