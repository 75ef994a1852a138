"""`llmkit ask`: answer a question from an index's documents, with citations (llmkit.retrieval.ask)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ask",
        help="answer a question from an index's documents, citing them (retrieval-augmented generation)",
        description="Retrieve the -k chunks of INDEX nearest QUESTION, put them in the prompt as numbered "
        "sources with their file and offsets, render it with MODEL's chat template (the plain User:/Assistant: "
        "one when it has none), drop the lowest-ranked sources while the prompt and --max-new-tokens pass the "
        "context window, generate (greedy unless the flags sample), and print the answer, then the sources it "
        "cites as [n] (file:start-end).",
    )
    p.add_argument("index", metavar="INDEX", type=Path, help="an index written by `llmkit index build`")
    p.add_argument("model", metavar="MODEL", help="llmkit checkpoint that generates the answer (decoder-only)")
    p.add_argument("question", metavar="QUESTION")
    p.add_argument("-k", type=int, default=4, help="sources retrieved (default 4)")
    p.add_argument("--hybrid", action="store_true", help="retrieve with dense + BM25 fused by reciprocal rank")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="answer length cap (default 256)")
    p.add_argument("--temperature", type=float, default=None, help="sample at T (default: greedy)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--show-prompt", action="store_true", help="print the prompt sent to the model (stderr)")
    p.add_argument("--embedder", default=None, metavar="DIR", help="default: the one the index was built with")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast the generator's weights")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.chat.template import ChatTemplate
    from llmkit.devices import resolve_device
    from llmkit.errors import LlmkitError
    from llmkit.inference import generate
    from llmkit.inference.loading import load_model, require_lm_head
    from llmkit.retrieval.ask import build_rag_prompt, cited
    from llmkit.retrieval.documents import embedder_for, search
    from llmkit.retrieval.store import Index

    if args.max_new_tokens < 1:
        raise LlmkitError(f"--max-new-tokens {args.max_new_tokens} must be >= 1", "pass a positive count")
    require_lm_head(args.model, "ask")  # before the index is searched: the answer needs generation
    with Index.open(args.index) as index:
        embedder = embedder_for(index, args.embedder, resolve_device(args.device), verify=not args.no_verify)
        hits = search(index, embedder, args.question, args.k, "hybrid" if args.hybrid else "dense")
    model = load_model(args.model, args.device, args.dtype, verify=not args.no_verify)
    if model.config.family != "decoder" or model.tokenizer is None:
        raise LlmkitError(f"{args.model}: ask needs a decoder-only checkpoint with a tokenizer", "pass a chat model")
    tokenizer = model.tokenizer
    roles = tokenizer.special_tokens
    template = ChatTemplate.from_dir(args.model, {f"{r}_token": roles[r] for r in ("bos", "eos") if r in roles})
    prompt = build_rag_prompt(
        args.question, hits, lambda message: template.render([{"role": "user", "content": message}]),
        lambda text: len(tokenizer.encode(text)), model.config.max_seq_len, args.max_new_tokens,
    )  # fmt: skip
    if args.show_prompt:
        print(prompt.text, file=sys.stderr)
    if prompt.dropped:
        print(f"note: {prompt.dropped} of {prompt.retrieved} sources left out to fit the context window",
              file=sys.stderr)  # fmt: skip
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature else {"do_sample": False}
    if args.seed is not None:
        sampling["seed"] = args.seed
    answer = generate(model, tokenizer.encode(prompt.text), max_new_tokens=args.max_new_tokens,
                      stop_strings=template.stop, **sampling)[0].text.strip()  # fmt: skip
    print(answer)
    named = cited(answer, prompt.sources)
    print("\ncited:" if named else "\nsources (the answer cites none by number):")
    for n, hit in named or list(enumerate(prompt.sources, start=1)):
        print(f"[{n}] {hit.citation()}")
