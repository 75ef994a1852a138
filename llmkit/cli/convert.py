"""`llmkit convert`: Hugging Face checkpoint directories and GGUF files to llmkit and back."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert Hugging Face checkpoints (GPT-2, Llama, BERT, T5) and GGUF files to llmkit and back",
        description="Convert a checkpoint directory between the transformers layout and llmkit's, or a GGUF file "
        "(llama.cpp / Ollama) to an llmkit directory and back. "
        "--from-hf reads config.json and model.safetensors (single or sharded) or pytorch_model.bin "
        "(loaded with weights_only=True), carries tokenizer.json and generation_config.json across, and "
        "writes an llmkit directory. --to-hf writes a directory transformers' from_pretrained loads. "
        "--from-gguf reads a llama or qwen2 GGUF: weights dequantized (the file's quantization error stays in "
        "them), or with --dtype quantized its Q4_0/Q4_1/Q8_0 matrices kept as int4/int8 bit for bit; tokenizer "
        "rebuilt from the vocabulary, chat template kept. --to-gguf writes a Llama-style "
        "llmkit decoder (RoPE, RMSNorm, SwiGLU; q/k/v biases as qwen2) as one GGUF file. "
        "--from-dcp reads the distributed checkpoint of a sharded run (--train.parallel fsdp: every process's "
        "shards, written by any number of processes) in one process and writes the ordinary single-file "
        "llmkit directory (no train_state.pt: resume the run itself with --resume).",
        epilog="examples:\n  llmkit convert --from-hf ~/models/flan-t5-base runs/flan-t5-base\n"
        "  llmkit convert --to-hf runs/my-gpt runs/my-gpt-hf\n"
        "  llmkit convert --from-gguf SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2 --dtype bf16\n"
        "  llmkit convert --from-gguf SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2-q4 --dtype quantized\n"
        "  llmkit convert --to-gguf models/smollm2 smollm2-q8_0.gguf --type q8_0\n"
        "  llmkit convert --from-dcp runs/pretrain runs/pretrain-plain",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", action="store_true", help="SRC is a transformers checkpoint directory")
    direction.add_argument("--to-hf", action="store_true", help="SRC is an llmkit checkpoint directory")
    direction.add_argument("--from-gguf", action="store_true", help="SRC is a GGUF file (architectures llama, qwen2)")
    direction.add_argument("--to-gguf", action="store_true", help="SRC is an llmkit directory, OUT a .gguf file")
    direction.add_argument("--from-dcp", action="store_true",
                           help="SRC is a sharded run's out_dir (a distributed checkpoint, dcp/)")  # fmt: skip
    p.add_argument("src", metavar="SRC", help="directory (or GGUF file) to read")
    p.add_argument("out", metavar="OUT", help="directory (or GGUF file) to write, replaced atomically if it exists")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "quantized"),
        default=None,
        help="--from-gguf: weight dtype written (default fp32); quantized: keep Q4_0/Q4_1/Q8_0 matrices as llmkit "
        "int4/int8, bit for bit (smaller and faster; other types dequantized to fp32)",
    )
    p.add_argument(
        "--type",
        dest="gguf_type",
        choices=("f32", "f16", "bf16", "q8_0"),
        default=None,
        help="--to-gguf: tensor type of the matrices (default f32; norms and biases stay f32)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.errors import LlmkitError

    if args.dtype and not args.from_gguf:
        raise LlmkitError("--dtype applies to --from-gguf only", "drop --dtype")
    if args.gguf_type and not args.to_gguf:
        raise LlmkitError("--type applies to --to-gguf only", "drop --type")
    start = time.perf_counter()
    if args.from_gguf or args.to_gguf:
        _gguf(args, start)
        return
    if args.from_dcp:
        _dcp(args, start)
        return
    from llmkit import checkpoint, hf
    from llmkit.models import build_model
    from llmkit.summary import human_count, summarize

    out = hf.from_hf(args.src, args.out) if args.from_hf else hf.to_hf(args.src, args.out, verify=not args.no_verify)
    cfg = checkpoint.load_config(out if args.from_hf else args.src)
    total = summarize(build_model(cfg, "meta")).total
    print(
        f"converted {args.src} -> {out}: {cfg.family} model, {human_count(total)} parameters, "
        f"{time.perf_counter() - start:.1f} s"
    )


def _gguf(args: argparse.Namespace, start: float) -> None:
    from llmkit import checkpoint, gguf
    from llmkit.gguf.layout import architecture_for
    from llmkit.models import build_model
    from llmkit.summary import human_bytes, human_count, summarize

    if args.from_gguf:
        out = gguf.from_gguf(args.src, args.out, dtype=args.dtype or "fp32", progress=True)
        cfg, what = checkpoint.load_config(out), f"{args.dtype or 'fp32'} weights"
        if args.dtype == "quantized":
            what = checkpoint.load_quantization(out).describe()
    else:
        from llmkit.inference.loading import require_lm_head

        require_lm_head(args.src, "convert --to-gguf", "convert --to-hf MODEL OUT")  # llama.cpp's decoders are LMs
        out = gguf.to_gguf(args.src, args.out, qtype=args.gguf_type or "f32", progress=True, verify=not args.no_verify)
        cfg, what = (
            checkpoint.load_config(args.src),
            f"{args.gguf_type or 'f32'}, {human_bytes(Path(out).stat().st_size)}",
        )
    total = summarize(build_model(cfg, "meta")).total
    print(
        f"converted {args.src} -> {out}: {architecture_for(cfg)} decoder, {human_count(total)} parameters, "
        f"{what}, {time.perf_counter() - start:.1f} s"
    )


def _dcp(args: argparse.Namespace, start: float) -> None:
    from llmkit import checkpoint
    from llmkit.models import build_model
    from llmkit.summary import human_count, summarize
    from llmkit.train import dcp

    out = dcp.convert(args.src, args.out, verify=not args.no_verify)
    cfg = checkpoint.load_config(out)
    total = summarize(build_model(cfg, "meta")).total
    print(
        f"converted {args.src} -> {out}: {cfg.family} model, {human_count(total)} parameters, "
        f"{time.perf_counter() - start:.1f} s"
    )
