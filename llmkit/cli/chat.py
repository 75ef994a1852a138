"""`llmkit chat`: an interactive multi-turn chat in the terminal (llmkit.chat), a thin handler."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

DEFAULT_HISTORY = Path("~/.cache/llmkit/chat_history")
DEFAULT_REPLY = 512  # tokens per reply unless --max-new-tokens says otherwise (capped at half the window)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a model in the terminal: streaming, history, slash commands",
        description="A multi-turn chat with MODEL. Each turn renders the conversation with the checkpoint's chat "
        "template (tokenizer_config.json; without one, plain 'System:/User:/Assistant:' lines) and streams the "
        "reply. When the conversation and --max-new-tokens outgrow the context window, the oldest turns are "
        "dropped and a line says so. Commands: /reset, /system TEXT, /set FIELD VALUE (any generation setting, "
        "e.g. /set temperature 0.7), /save FILE (the conversation as JSON), /help, /quit. Ctrl-C stops a reply; "
        "Ctrl-D leaves. On a terminal, lines are edited with prompt_toolkit and kept in --history; from a pipe, "
        "lines are read plainly. With --index, each message retrieves its sources from the index (as `llmkit ask`), "
        "the reply is asked to cite them by number, and the cited sources are listed after it.",
    )
    p.add_argument("model", metavar="MODEL", help="llmkit checkpoint directory (decoder-only, with a tokenizer)")
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt (default: none, or the template's)")
    p.add_argument(
        "--max-new-tokens", type=int, default=None, metavar="N",
        help=f"most tokens per reply (default {DEFAULT_REPLY}, at most half the context window)",
    )  # fmt: skip
    p.add_argument(
        "--temperature", type=float, default=None, help="sample at temperature T (default: as the checkpoint)"
    )
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the top tokens summing to P")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling, for repeatable replies")
    p.add_argument(
        "--history", default=str(DEFAULT_HISTORY), metavar="FILE",
        help=f"where typed lines are kept for the arrow keys (default {DEFAULT_HISTORY}; 'none' keeps no file)",
    )  # fmt: skip
    p.add_argument(
        "--index", type=Path, default=None, metavar="INDEX", help="retrieve sources per message from this index"
    )
    p.add_argument("-k", type=int, default=3, help="sources retrieved per message with --index (default 3)")
    p.add_argument("--hybrid", action="store_true", help="with --index: dense + BM25 search")
    p.add_argument("--embedder", default=None, metavar="DIR", help="default: the one the index was built with")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    p.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast the weights (default: as stored)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.chat.session import ChatSession
    from llmkit.chat.template import ChatTemplate, turn_settings
    from llmkit.chat.terminal import line_reader
    from llmkit.chat.terminal import run as chat
    from llmkit.devices import resolve_device
    from llmkit.errors import LlmkitError
    from llmkit.inference.engine import resolve_config
    from llmkit.inference.loading import load_model, model_name, require_lm_head
    from llmkit.retrieval.documents import embedder_for, search
    from llmkit.retrieval.store import Index

    if args.index is not None and args.k < 1:
        raise LlmkitError(f"-k {args.k} must be >= 1", "retrieve at least one source per message")
    index = Index.open(args.index) if args.index is not None else None  # before the model: a bad index fails fast
    require_lm_head(args.model, "chat")
    model = load_model(args.model, args.device, args.dtype, verify=not args.no_verify)
    if getattr(model, "tokenizer", None) is None or model.config.family != "decoder":
        raise LlmkitError("llmkit chat needs a decoder-only checkpoint with a tokenizer", "pick such a MODEL")
    window = model.config.max_seq_len
    overrides = {"max_new_tokens": args.max_new_tokens or min(DEFAULT_REPLY, window // 2)}
    overrides |= {k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p)) if v is not None}
    if args.temperature is not None or args.top_p is not None:
        overrides["do_sample"] = True
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = resolve_config(model, None, overrides)
    template = ChatTemplate.for_model(args.model, model.tokenizer)
    # the reply ends at the template's end of turn, as `llmkit generate` ends it (the same rule, turn_settings)
    config = config.replace(**turn_settings(template, model.tokenizer, config.eos_token_id, config.stop_strings))
    session = ChatSession(template, config, window, lambda text: len(model.tokenizer.encode(text)), args.system)
    history = None if args.history.lower() == "none" else Path(os.path.expanduser(args.history))
    kind = "the checkpoint's chat template" if template.source else "the plain template (no chat template)"
    try:
        if index is not None:
            embedder = embedder_for(index, args.embedder, resolve_device(args.device), verify=not args.no_verify)
            mode = "hybrid" if args.hybrid else "dense"
            session.retrieve = lambda question: search(index, embedder, question, args.k, mode)
            kind += f", sources from {args.index} ({len(index)} chunks)"
        # Ctrl-C must stop a reply even when the shell started us with SIGINT ignored (a background job, nohup):
        # a process inherits an ignored SIGINT, and Python then never raises KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)
        name = model_name(args.model)
        banner = f"llmkit chat: {name}, {window}-token window, {kind}. /help for commands, Ctrl-D leaves."
        # from a pipe stdout carries the replies only; the banner goes to stderr there
        print(banner, file=sys.stdout if sys.stdin.isatty() else sys.stderr, flush=True)
        chat(model, session, line_reader(history))
    finally:
        if index is not None:
            index.close()
