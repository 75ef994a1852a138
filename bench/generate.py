"""Greedy decoding speed, llmkit against transformers on the same random weights, in one run.

Each case builds a transformers GPT-2 from a config with random weights, converts it with
``llmkit.hf.from_hf`` (so both libraries hold identical weights), and times greedy generation from
a 16-token prompt with EOS off, so every run makes exactly the number of new tokens asked. llmkit
runs twice: eager, and with ``compile=True`` (each decoding step one torch.compile'd graph; the
warm-up run compiles, which is not timed). After one warm-up, ``--repeats`` rounds run each side
once, the order reversed every other round (A B C, C B A: interleaved pairs); each figure is the
median over the rounds, each ratio the median of the per-round ratios with its range, and the
1-minute load average is printed beside them (figures taken above 2 on a 2-core machine are noise).
tokens/s = batch * new tokens / wall time (prefill included).

    .venv/bin/python bench/generate.py                 # the table in docs/benchmarks.md
    .venv/bin/python bench/generate.py --quick         # fewer tokens, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from llmkit import checkpoint
from llmkit.hf import from_hf
from llmkit.inference import generate

PROMPT_LEN = 16


@dataclass
class Case:
    name: str
    hf_config: dict
    batch: int
    new_tokens: int
    dtype: torch.dtype = torch.float32


SHAPES = {
    # GPT-2 small: 124M parameters, vocab 50257
    "gpt2-small": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
    # the tiny shape: 4 layers, 128 wide, character vocabulary (tinyshakespeare's 65 symbols)
    "tiny": dict(n_embd=128, n_layer=4, n_head=4, vocab_size=65, n_positions=1024),
}


def cases(quick: bool) -> list[Case]:
    scale = 8 if quick else 1
    return [
        Case("tiny", SHAPES["tiny"], 1, 256 // scale),
        Case("gpt2-small", SHAPES["gpt2-small"], 1, 128 // scale),
        Case("tiny", SHAPES["tiny"], 8, 256 // scale),
        Case("gpt2-small", SHAPES["gpt2-small"], 8, 128 // scale),
        Case("gpt2-small", SHAPES["gpt2-small"], 1, 128 // scale, torch.bfloat16),
    ]


def build(case: Case, tmp: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**case.hf_config, bos_token_id=0, eos_token_id=0))
    hf.save_pretrained(tmp / "hf")
    from_hf(tmp / "hf", tmp / "ours")
    ours = checkpoint.load(tmp / "ours")
    return hf.to(case.dtype).eval(), ours.to(case.dtype).eval()


def run_hf(model, ids: torch.Tensor, new: int) -> torch.Tensor:
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
    return out[:, ids.shape[1] :]


def run_ours(model, ids: torch.Tensor, new: int, compile: bool = False) -> torch.Tensor:
    out = generate(model, ids, max_new_tokens=new, do_sample=False, eos_token_id=[], pad_token_id=0, compile=compile)
    return torch.tensor([c.token_ids for c in out])


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(case: Case, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build(case, Path(tmp))
    ids = torch.randint(
        1, case.hf_config["vocab_size"], (case.batch, PROMPT_LEN), generator=torch.Generator().manual_seed(1)
    )
    new = case.new_tokens
    runs = {
        "transformers": lambda: run_hf(hf, ids, new),
        "llmkit": lambda: run_ours(ours, ids, new),
        "compiled": lambda: run_ours(ours, ids, new, compile=True),
    }
    outputs = {name: run() for name, run in runs.items()}  # warm-up (compiles), and a check
    assert all(o.shape == (case.batch, new) for o in outputs.values()), [o.shape for o in outputs.values()]
    same = all(bool((o == outputs["transformers"]).all()) for o in outputs.values())
    times: dict[str, list[float]] = {name: [] for name in runs}
    load = [os.getloadavg()[0]]
    # Interleaved rounds, the order reversed every other round (A B C, C B A, ...), so a steady
    # drift of the machine's speed hits every side alike; each round is one pair per ratio.
    for round_ in range(repeats):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            times[name].append(timed(runs[name]))
        load.append(os.getloadavg()[0])
    tokens = case.batch * new
    eager_ratios = [h / o for h, o in zip(times["transformers"], times["llmkit"], strict=True)]
    compiled_ratios = [h / o for h, o in zip(times["transformers"], times["compiled"], strict=True)]
    return {
        "shape": case.name, "dtype": str(case.dtype).replace("torch.", ""), "batch": case.batch,
        "new_tokens": new, "rounds": repeats,
        "transformers_tok_s": tokens / median(times["transformers"]),
        "llmkit_tok_s": tokens / median(times["llmkit"]), "compiled_tok_s": tokens / median(times["compiled"]),
        "speedup": median(eager_ratios), "speedup_range": [min(eager_ratios), max(eager_ratios)],
        "compiled_speedup": median(compiled_ratios),
        "compiled_speedup_range": [min(compiled_ratios), max(compiled_ratios)],
        "load_average": [min(load), max(load)], "seconds": times, "same_tokens": same,
    }  # fmt: skip


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="an eighth of the tokens, for a smoke test")
    parser.add_argument("--only", default=None, help="run only cases whose shape is this name")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    print(f"# {time.strftime('%Y-%m-%d')} | {cpu_model()} | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'shape':<12}{'dtype':<10}{'batch':>6}{'new':>6}{'transformers':>14}{'llmkit':>10}{'speedup':>9}"
          f"{'compiled':>10}{'speedup':>9}  ranges (eager; compiled)   load  same")  # fmt: skip
    rows = []
    for case in cases(args.quick):
        if args.only and case.name != args.only:
            continue
        r = measure(case, args.repeats)
        rows.append(r)
        print(f"{r['shape']:<12}{r['dtype']:<10}{r['batch']:>6}{r['new_tokens']:>6}{r['transformers_tok_s']:>14.1f}"
              f"{r['llmkit_tok_s']:>10.1f}{r['speedup']:>8.2f}x{r['compiled_tok_s']:>10.1f}"
              f"{r['compiled_speedup']:>8.2f}x  {r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f}; "
              f"{r['compiled_speedup_range'][0]:.2f}-{r['compiled_speedup_range'][1]:.2f}   "
              f"{r['load_average'][0]:.1f}-{r['load_average'][1]:.1f}  {r['same_tokens']}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
