"""Calibrated (GPTQ) against round-to-nearest int4: perplexity on held-out text, per format.

For each format (``--formats``: "int4 GROUP SCHEME;..."), the float checkpoint ``--model`` is quantized
in memory twice, by ``quantize_model`` (round to nearest: `llmkit quantize` without --calibrate) and by
``calibrate_model`` (GPTQ: `llmkit quantize --calibrate`) on the same calibration windows, and each
result is scored by ``llmkit.evaluate.perplexity`` (what `llmkit eval --perplexity` runs) on the same
held-out tokens. The windows and the held-out sample come from ``calibration_set`` exactly as
`llmkit quantize --calibrate SOURCE --calibration-samples N --eval-tokens M` draws them (the last 10%
of SOURCE's tokens held out), so a row is what that command reports.

    nice -n 10 .venv/bin/python bench/quantize_calibrated.py --model runs/quickstart/model --calibrate builtin
    nice -n 10 .venv/bin/python bench/quantize_calibrated.py --model SMOLLM2_FP32 \\
        --calibrate data/tinyshakespeare/input.txt.gz --samples 64
"""

from __future__ import annotations

import argparse
import time

import torch

import llmkit
from llmkit.evaluate.perplexity import perplexity
from llmkit.quantize import QuantSpec, quantize_model
from llmkit.quantize.calibrate import calibrate_model
from llmkit.quantize.calibration import EVAL_TOKENS, MAX_WINDOW, SAMPLES, calibration_set

FORMATS = "int4 32 asymmetric;int4 32 symmetric;int4 128 asymmetric;int4 128 symmetric"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a float llmkit checkpoint directory (a decoder LM)")
    parser.add_argument("--calibrate", default="builtin", help="'builtin' or a text file (as `llmkit quantize`)")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="calibration windows")
    parser.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS, help="held-out tokens scored")
    parser.add_argument("--formats", default=FORMATS, help="'METHOD GROUP SCHEME' entries, ';'-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC | torch {torch.__version__} | {args.threads} threads | load {load}")
    model = llmkit.load(args.model)
    window = min(model.config.max_seq_len, MAX_WINDOW)
    data = calibration_set(model.tokenizer, args.calibrate, args.samples, window, args.eval_tokens)
    print(f"# calibration: {data.describe()}; held out: {len(data.held_out):,} tokens", flush=True)
    base = perplexity(model, data.held_out, progress=False)
    print(f"# float perplexity {base.perplexity:.3f} over {base.tokens:,} tokens\n")
    print("| format | round to nearest | change | GPTQ | change | GPTQ output error / RTN's | GPTQ seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for entry in args.formats.split(";"):
        method, group, scheme = entry.split()
        spec = QuantSpec(method, int(group), scheme=scheme)
        rtn = perplexity(quantize_model(llmkit.load(args.model), spec), data.held_out, progress=False).perplexity
        calibrated = llmkit.load(args.model)
        stats = calibrate_model(calibrated, spec, data.windows, progress=False)
        ours = perplexity(calibrated, data.held_out, progress=False).perplexity
        print(
            f"| {method} g{group} {scheme} | {rtn:.3f} | {rtn / base.perplexity - 1:+.2%} | {ours:.3f} | "
            f"{ours / base.perplexity - 1:+.2%} | {stats.error_ratio():.1%} | {stats.seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
