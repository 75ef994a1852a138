"""Decoding speed with a grammar against without, on the same model, prompt and number of steps, in one run.

The constrained run decodes JSON under a schema (an array of 2-5 person records, the kind of output a
tool or an extraction prompt asks for) and ends when the JSON is complete; the free run then decodes
exactly as many steps with EOS off, so both do the same number of model steps from the same prompt.
What differs is the grammar's work per step: llguidance's token mask for each row, turning the bitmask
into a boolean mask over the vocabulary, and feeding the chosen token back to the matcher.
The runs alternate, each figure is the best of ``--repeats`` after a warm-up, so load hits both alike.
ms/step = wall time / steps (prefill included in both).

The model is a real instruction-tuned checkpoint (SmolLM2-135M-Instruct: 49,152 tokens, so the mask is as
large as real use makes it), or any llmkit checkpoint directory given with --model.

    nice .venv/bin/python bench/constrained.py                    # the table in docs/benchmarks.md
    nice .venv/bin/python bench/constrained.py --model DIR --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jsonschema_rs
import torch

from llmkit import checkpoint
from llmkit.chat.template import ChatTemplate
from llmkit.inference import generate

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m-instruct"
SCHEMA = {
    "type": "array",
    "minItems": 2,
    "maxItems": 5,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "maxLength": 40},
            "role": {"enum": ["engineer", "doctor", "teacher", "artist"]},
        },
        "required": ["name", "age", "email", "role"],
        "additionalProperties": False,
    },
}
QUESTION = "List some people as JSON records with name, age, email and role."


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(model, prompt: str, batch: int, sample: bool, repeats: int, max_new: int) -> dict:
    """Best-of-``repeats`` ms/step constrained and free, alternating, for ``batch`` copies of the prompt."""
    prompts = [prompt] * batch
    kw = {"do_sample": True, "seed": 0, "temperature": 0.7} if sample else {"do_sample": False}
    constrained = lambda: generate(model, prompts, json_schema=SCHEMA, max_new_tokens=max_new, **kw)  # noqa: E731
    out = constrained()  # warm-up, and the number of steps the free run must match
    steps = max(len(c.token_ids) for c in out)
    free = lambda: generate(model, prompts, max_new_tokens=steps, eos_token_id=[], **kw)  # noqa: E731
    free()
    best_c = best_f = float("inf")
    for _ in range(repeats):
        seconds, out = timed(constrained)
        best_c = min(best_c, seconds)
        best_f = min(best_f, timed(free)[0])
    validator = jsonschema_rs.validator_for(SCHEMA)
    valid = sum(c.finish_reason != "length" and validator.is_valid(json.loads(c.text)) for c in out)
    return {
        "batch": batch,
        "mode": "sampled T=0.7" if sample else "greedy",
        "steps": steps,
        "free_ms_per_step": 1000 * best_f / steps,
        "constrained_ms_per_step": 1000 * best_c / steps,
        "ratio": best_f / best_c,  # constrained speed as a share of free speed
        "valid": f"{valid}/{batch}",
        "example": out[0].text,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="llmkit checkpoint directory")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="batch 1 greedy only, one repeat")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    args = parser.parse_args()
    model = checkpoint.load(args.model)
    model = model.to(torch.float32 if args.dtype == "fp32" else torch.bfloat16).eval()
    chat = ChatTemplate.for_model(args.model, model.tokenizer)
    prompt = chat.render([{"role": "user", "content": QUESTION}])
    cases = [(1, False)] if args.quick else [(1, False), (1, True), (4, True)]
    load = os.getloadavg()
    print(f"# {args.model.name} {args.dtype}, torch {torch.__version__}, {platform.machine()}, "
          f"threads {torch.get_num_threads()}, load {load[0]:.2f} {load[1]:.2f}")  # fmt: skip
    print("| batch | decoding | steps | free ms/step | constrained ms/step | constrained/free speed | valid JSON |")
    print("|---|---|---|---|---|---|---|")
    for batch, sample in cases:
        row = run(model, prompt, batch, sample, 1 if args.quick else args.repeats, args.max_new_tokens)
        if args.json:
            print(json.dumps(row))
        print(f"| {row['batch']} | {row['mode']} | {row['steps']} | {row['free_ms_per_step']:.1f} | "
              f"{row['constrained_ms_per_step']:.1f} | {row['ratio']:.0%} | {row['valid']} |", flush=True)  # fmt: skip
    print(f"example: {row['example']}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
