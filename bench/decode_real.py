"""Decoding speed of real models in each precision: llmkit against llama.cpp and transformers on the same
GGUF-derived weights, with each precision's memory-bandwidth bound.

Models: SmolLM2-135M-Instruct (its pinned Q4_1 file) and Qwen2.5-Coder-0.5B-Instruct (its pinned file,
Q5_0/Q4_K/Q6_K/Q8_0), from `llmkit models get`. Weights, made once into --work and reused:

- fp32 checkpoint: the file dequantized (`llmkit convert --from-gguf`); bf16: the same, cast.
- f16 and Q8_0 GGUF for llama.cpp: `llmkit convert --to-gguf` of the fp32 checkpoint.
- Q4_1 GGUF: SmolLM2's own file; for Qwen, llama.cpp's quantizer (``llama_model_quantize``) on the f16
  file, with its embedding and output kept Q8_0 (types llmkit holds).
- llmkit int8 and int4: the Q8_0 and Q4_1 files read with ``--dtype quantized``: bit for bit the
  weights llama.cpp runs (tests/test_gguf.py checks it).

Each case generates --new tokens greedily after a PROMPT_LEN-token prompt at batch 1, prefill
included, end-of-sequence ignored. Warm-up runs first (compiles); then --repeats rounds run every case
once, the order reversed every other round (A B ... B A) so load from elsewhere hits all alike; each
figure is the median tokens/s with the range. llama.cpp: llama-cpp-python built from source here
(`pip wheel llama-cpp-python==0.3.36 --no-binary :all:` with CMAKE_ARGS=-DGGML_NATIVE=ON: about 20
minutes on 2 cores; install the wheel and diskcache), n_threads = torch's threads. transformers: its
fastest CPU mode for generate, a static cache and a torch.compile'd forward, in fp32 and bf16.

bound = memory bandwidth / bytes of weights read per token: every matrix once (a tied embedding once,
as the head), norms; the bandwidth is measured here as the best of a few reads of a 1 GiB tensor with
the same threads.

    nice .venv/bin/python bench/decode_real.py --models smollm2 --repeats 3
    nice .venv/bin/python bench/decode_real.py --models qwen-coder --repeats 3 --new 64
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from llmkit import checkpoint
from llmkit.gguf import from_gguf, registry, to_gguf
from llmkit.inference import generate, native

PROMPT_LEN = 16
MODELS = {"smollm2": "smollm2-135m-instruct", "qwen-coder": "qwen2.5-coder-0.5b-instruct"}
TEXT = "def fibonacci(n):\n    # return the n-th Fibonacci number, computed iteratively\n    a, b = 0, 1\n"


# ---- weights --------------------------------------------------------------------------------
def llamacpp_quantize(src: Path, out: Path, ftype: str) -> None:
    """llama.cpp's own quantizer (the library llama-quantize wraps), embedding and output kept Q8_0."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = torch.get_num_threads()
    params.output_tensor_type = params.token_embedding_type = llama_cpp.GGML_TYPE_Q8_0
    tmp = out.with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize failed on {src}")
    tmp.rename(out)


def prepare(key: str, work: Path) -> dict[str, Path]:
    """Every file the cases read, made once into ``work``."""
    known = registry.known(MODELS[key])
    work.mkdir(parents=True, exist_ok=True)
    source = registry.gguf_file(known, work)
    files = {"fp32": work / f"{key}-fp32", "f16.gguf": work / f"{key}-f16.gguf", "q8_0.gguf": work / f"{key}-q8_0.gguf"}
    files["q4_1.gguf"] = source if key == "smollm2" else work / f"{key}-q4_1.gguf"
    files["int8"], files["int4"] = work / f"{key}-int8", work / f"{key}-int4"
    if not files["fp32"].exists():
        from_gguf(source, files["fp32"], dtype="fp32", progress=True)
    for qtype in ("f16", "q8_0"):
        if not files[f"{qtype}.gguf"].exists():
            to_gguf(files["fp32"], files[f"{qtype}.gguf"], qtype=qtype, progress=True)
    if not files["q4_1.gguf"].exists():
        llamacpp_quantize(files["f16.gguf"], files["q4_1.gguf"], "Q4_1")
    for mine, theirs in (("int8", "q8_0.gguf"), ("int4", "q4_1.gguf")):
        if not files[mine].exists():
            from_gguf(files[theirs], files[mine], dtype="quantized", progress=True)
    return files


# ---- runners --------------------------------------------------------------------------------
def llmkit_runner(directory: Path, dtype: torch.dtype | None, step: str, prompt: list[int], new: int) -> Callable:
    """``step``: "native" (generate's default for one prompt: llmkit.inference.native), "compiled" (the
    torch.compile'd step, the native one switched off) or "eager" (the torch step)."""
    model = checkpoint.load(directory, dtype=dtype) if dtype else checkpoint.load(directory)

    def run() -> list[int]:
        switch = os.environ.get(native.ENV_SWITCH)
        os.environ[native.ENV_SWITCH] = "1" if step == "native" else "0"
        try:
            out = generate(model, prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           compile=step == "compiled")  # fmt: skip
        finally:
            if switch is None:
                del os.environ[native.ENV_SWITCH]
            else:
                os.environ[native.ENV_SWITCH] = switch
        return out[0].token_ids

    run.model = model
    return run


def llamacpp_runner(path: Path, prompt: list[int], new: int) -> Callable:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=torch.get_num_threads(), n_batch=512, verbose=False)

    def run() -> list[int]:
        tokens = []
        for token in llm.generate(prompt, temp=0.0, reset=True):
            tokens.append(token)
            if len(tokens) == new:
                break
        return tokens

    return run


def transformers_runner(directory: Path, dtype: torch.dtype, prompt: list[int], new: int) -> Callable:
    import transformers

    transformers.logging.set_verbosity_error()
    hf_dir = directory.parent / f"{directory.name}-hf"
    if not hf_dir.exists():
        from llmkit.hf.convert import to_hf

        to_hf(directory, hf_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
    hf.generation_config.cache_implementation = "static"
    hf.forward = torch.compile(hf.forward, dynamic=False)
    ids = torch.tensor([prompt])

    def run() -> list[int]:
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        return out[0, len(prompt) :].tolist()

    return run


# ---- bounds ---------------------------------------------------------------------------------
def bandwidth() -> float:
    """Bytes per second of a plain read of 1 GiB with torch's threads (the best of 5)."""
    t = torch.ones(2**28)  # 1 GiB of fp32
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        t.sum()
        best = min(best, time.perf_counter() - start)
    return t.numel() * 4 / best


def bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decoding step reads: every tensor once (tied ones once), except an untied
    embedding table, of which a step reads one row."""
    seen, total = set(), 0
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    heads = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in seen or t is None:
            continue
        seen.add(id(t))
        untied_table = id(t) in tables and id(t) not in heads and "tokens.weight" in name
        total += t[0].numel() * t.element_size() if untied_table else t.numel() * t.element_size()
    return total


# ---- the run --------------------------------------------------------------------------------
def cases(files: dict[str, Path], prompt: list[int], new: int, with_hf: bool, steps: list[str]) -> dict[str, Callable]:
    c = {}
    for precision, directory, dtype in (
        ("bf16", files["fp32"], torch.bfloat16),
        ("int8", files["int8"], None),
        ("int4", files["int4"], None),
    ):
        for step in steps:
            c[f"llmkit {precision} {step}"] = llmkit_runner(directory, dtype, step, prompt, new)
    for name, gguf_file in (("f16", "f16.gguf"), ("Q8_0", "q8_0.gguf"), ("Q4_1", "q4_1.gguf")):
        c[f"llama.cpp {name}"] = llamacpp_runner(files[gguf_file], prompt, new)
    if with_hf:
        c["transformers fp32"] = transformers_runner(files["fp32"], torch.float32, prompt, new)
        c["transformers bf16"] = transformers_runner(files["fp32"], torch.bfloat16, prompt, new)
    return c


def measure(runs: dict[str, Callable], repeats: int, new: int) -> dict[str, list[float]]:
    for name, run in runs.items():
        start = time.perf_counter()
        tokens = run()
        assert len(tokens) == new, (name, len(tokens))
        print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for r in range(repeats):
        for name in order if r % 2 == 0 else reversed(order):
            start = time.perf_counter()
            runs[name]()
            rates[name].append(new / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,qwen-coder", help="comma-separated: smollm2, qwen-coder")
    parser.add_argument("--new", type=int, default=128, help="new tokens per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("runs/decode_real"), help="converted weights, reused")
    parser.add_argument("--no-transformers", action="store_true", help="leave transformers out (faster)")
    parser.add_argument(
        "--steps",
        default="native,compiled",
        help="llmkit's decoding steps to run, comma-separated: native (C), compiled (torch.compile), eager",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC | torch {torch.__version__} | {args.threads} threads | load {load}")
    bw = bandwidth()
    print(f"# memory bandwidth (1 GiB read, {args.threads} threads): {bw / 1e9:.1f} GB/s")
    report = {"bandwidth_GBps": bw / 1e9, "load_before": load, "models": {}}
    for key in args.models.split(","):
        files = prepare(key, args.work)
        fp32 = checkpoint.load(files["fp32"])
        prompt = fp32.tokenizer.encode(TEXT)[:PROMPT_LEN]
        bounds = {
            "fp32": bytes_per_token(fp32),
            "bf16": bytes_per_token(fp32.to(torch.bfloat16)),
            "int8": bytes_per_token(checkpoint.load(files["int8"])),
            "int4": bytes_per_token(checkpoint.load(files["int4"])),
        }
        del fp32
        runs = cases(files, prompt, args.new, not args.no_transformers, args.steps.split(","))
        rates = measure(runs, args.repeats, args.new)
        print(
            f"\n## {MODELS[key]}: batch 1, {PROMPT_LEN}-token prompt + {args.new} new tokens, tokens/s median [range]"
        )
        print("| case | tokens/s | range | bytes/token | bandwidth bound |\n|---|---|---|---|---|")
        rows = {}
        for name, values in rates.items():
            precision = next((p for p in bounds if p in name), None)
            precision = precision or {"f16": "bf16", "Q8_0": "int8", "Q4_1": "int4"}.get(name.split()[-1])
            size = bounds.get(precision, 0)
            med = statistics.median(values)
            rows[name] = {"median": med, "min": min(values), "max": max(values), "bytes_per_token": size}
            print(f"| {name} | {med:.1f} | {min(values):.1f}-{max(values):.1f} | {size / 1e6:.0f} MB | "
                  f"{bw / size:.0f} |")  # fmt: skip
        report["models"][key] = rows
    report["load_after"] = Path("/proc/loadavg").read_text().split()[0]
    print(f"# load average after: {report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
