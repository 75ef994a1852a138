"""`llmkit serve`: load a checkpoint and serve it over HTTP (llmkit.serve), loopback by default."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API, with a playground page",
        description="Serve MODEL (a decoder-only llmkit checkpoint with a tokenizer) on FastAPI/uvicorn: "
        'POST /v1/completions and /v1/chat/completions (streamed as server-sent events with "stream": true), '
        "GET /v1/models[/ID], POST /tokenize and /detokenize (vLLM's), GET /metrics (Prometheus), GET /health, "
        "and a playground page at /. A checkpoint with a classification head (llmkit finetune's classify or tokens) "
        "answers POST /classify (vLLM's shape: labels and probabilities, or entities) instead of the generation "
        "routes, which then answer a 400. Requests that arrive together are decoded "
        "together in one batch (up to --max-batch). The server binds 127.0.0.1 unless --host says otherwise; "
        "requests can neither name files nor load checkpoints.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="llmkit checkpoint directory with a tokenizer (decoder-only, or a classifier)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key", default=None, metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* (default: none; set one before binding beyond loopback)",
    )  # fmt: skip
    p.add_argument(
        "--allow-public-without-key", action="store_true",
        help="allow a --host beyond loopback without --api-key (refused otherwise: anyone who can reach the machine "
        "could use the model)",
    )  # fmt: skip
    p.add_argument(
        "--allowed-origins", action="append", default=None, metavar="ORIGIN",
        help="web origins whose pages may call the API (repeatable or comma-separated, e.g. http://localhost:3000; "
        "'*': any), as Ollama's OLLAMA_ORIGINS. Requests from other pages are refused (403); clients that are not "
        "browsers send no Origin and are not affected",
    )  # fmt: skip
    p.add_argument(
        "--public-metrics", action="store_true", help="serve /metrics without the API key (by default it needs it)"
    )
    p.add_argument(
        "--max-batch", type=int, default=64, metavar="N",
        help="sequences decoded together (default 64: on a 2-core CPU a step of 64 rows of SmolLM2-135M costs "
        "about 5x one row's, docs/serving.md)",
    )  # fmt: skip
    p.add_argument(
        "--kv-cache-mb", type=float, default=None, metavar="MB",
        help="memory for the KV cache of all requests together (default 1024, or one full context window if "
        "that is more); requests wait for room, and one that could not fit alone is refused (400)",
    )  # fmt: skip
    p.add_argument(
        "--prefill-tokens", type=int, default=512, metavar="N",
        help="prompt positions one prefill pass runs (default 512): waiting prompts are read together, long ones "
        "in chunks, so a burst of arrivals delays the requests already decoding by one pass per token at most",
    )  # fmt: skip
    p.add_argument(
        "--no-prefix-cache", action="store_true",
        help="compute every prompt in full (by default prompts that start with the same tokens, such as a chat "
        "template's system prompt, share those positions' keys and values)",
    )  # fmt: skip
    p.add_argument(
        "--max-tokens", type=int, default=1024, metavar="N",
        help="the most new tokens one request may ask for (default 1024; the context window also caps it)",
    )  # fmt: skip
    p.add_argument(
        "--max-stop", type=int, default=64, metavar="N",
        help="stop strings one request may send (default 64; OpenAI allows 4, lm-eval's code tasks send more)",
    )  # fmt: skip
    p.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES", help="largest request body (1 MiB)")
    p.add_argument(
        "--header-timeout", type=float, default=10.0, metavar="SECONDS",
        help="close a connection whose request headers have not all arrived within SECONDS (default 10): "
        "slow or half-open clients cannot hold sockets",
    )  # fmt: skip
    p.add_argument(
        "--name",
        action="append",
        default=None,
        help="a model id clients may send, repeatable as vLLM's --served-model-name; the first is the id responses "
        "carry (default: the name the checkpoint carries, as llmkit inspect shows it, then its aliases: the name as "
        "one word and the card's origin, e.g. HuggingFaceTB/SmolLM2-135M-Instruct). Requests may leave model out",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no request log (by default one stderr line per request: method, path, status, "
        "tokens in and out, seconds)",
    )
    p.add_argument(
        "--embedder", default="minilm", metavar="DIR",
        help="encoder behind POST /v1/embeddings (default minilm: the installed all-MiniLM-L6-v2, when it is; "
        "'none': no embeddings route)",
    )  # fmt: skip
    p.add_argument(
        "--embedding-token-ids", action="store_true",
        help="let POST /v1/embeddings take token ids, read as the embedder's own tokens (refused by default: "
        "LangChain's OpenAIEmbeddings sends OpenAI's token ids unless check_embedding_ctx_length=False)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    p.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast the weights (default: as stored)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    import uvicorn

    from llmkit.devices import resolve_device
    from llmkit.errors import LlmkitError
    from llmkit.inference.loading import load_model, model_aliases
    from llmkit.serve.app import ServeSettings, create_app
    from llmkit.serve.chat import ChatTemplate
    from llmkit.serve.connections import header_timeout_protocol

    for flag, value in (
        ("--max-batch", args.max_batch),
        ("--max-tokens", args.max_tokens),
        ("--max-body", args.max_body),
        ("--max-stop", args.max_stop),
        ("--prefill-tokens", args.prefill_tokens),
    ):
        if value < 1:
            raise LlmkitError(f"{flag} {value} must be >= 1", f"pass a positive {flag}")
    if not args.header_timeout > 0:
        raise LlmkitError(f"--header-timeout {args.header_timeout} must be > 0", "pass a number of seconds, e.g. 10")
    if not 0 <= args.port <= 65535:
        raise LlmkitError(f"--port {args.port} is not a TCP port", "pass 0-65535")
    if not _loopback(args.host) and args.api_key is None and not args.allow_public_without_key:
        raise LlmkitError(
            f"--host {args.host} without --api-key: anyone who can reach this machine could use the model",
            "set --api-key KEY, or pass --allow-public-without-key to serve it openly",
        )
    origins = tuple(o.strip() for flag in args.allowed_origins or [] for o in flag.split(",") if o.strip())
    sock = bind(args.host, args.port)  # before the model loads: a busy port fails at once, in one line
    directory = Path(args.model)
    device = resolve_device(args.device)
    model = load_model(directory, device, args.dtype, verify=not args.no_verify)
    roles = model.tokenizer.special_tokens if model.tokenizer is not None else {}
    special = {f"{role}_token": roles[role] for role in ("bos", "eos") if role in roles}  # names chat templates use
    names = args.name or model_aliases(directory)  # the checkpoint's one name first (llmkit inspect's)
    settings = ServeSettings(
        name=names[0], aliases=tuple(names[1:]), api_key=args.api_key, max_batch=args.max_batch,
        kv_cache_mb=args.kv_cache_mb, prefill_tokens=args.prefill_tokens, prefix_cache=not args.no_prefix_cache,
        max_tokens=args.max_tokens, max_body=args.max_body, max_stop=args.max_stop,
        chat=ChatTemplate.from_dir(directory, special), request_log=not args.quiet,
        embedder=load_embedder(args.embedder, device, verify=not args.no_verify), host=args.host,
        allowed_origins=origins, public_metrics=args.public_metrics, embedding_token_ids=args.embedding_token_ids,
    )  # fmt: skip
    app = create_app(model, settings)
    if not _loopback(args.host) and args.api_key is None:  # --allow-public-without-key: said, not silent
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    port = sock.getsockname()[1]  # the real one when --port 0 picked it
    also = f" (also answering as {', '.join(settings.aliases)})" if settings.aliases else ""
    where = "POST /classify" if model.config.has_classifier else "playground at /, API at /v1"
    print(f"serving {settings.name}{also} at http://{args.host}:{port}/ ({where})", file=sys.stderr)
    protocol = header_timeout_protocol(args.header_timeout)
    # log_config=None: uvicorn's own dictConfig would close every logging handler already in the
    # process (absl's, bound to stderr, among them), not only configure its loggers. Its warnings
    # and errors still reach stderr through the root logger.
    config = uvicorn.Config(app, log_level="warning", http=protocol, log_config=None)
    serve_on(uvicorn.Server(config), sock)


def load_embedder(name: str, device: str, verify: bool = True):
    """The --embedder for /v1/embeddings, loaded on its first request (checked now to be a model folder);
    the default MiniLM only when installed, 'none' for no route."""
    from llmkit.errors import LlmkitError
    from llmkit.retrieval.embed import default_embedder, resolve_embedder
    from llmkit.serve.embeddings import DeferredEmbedder

    if name == "none" or (name == "minilm" and default_embedder() is None):
        return None
    directory = resolve_embedder(name)
    if not (directory / "config.json").is_file():
        raise LlmkitError(f"--embedder {name}: no model folder there (no config.json)", "pass an encoder directory")
    return DeferredEmbedder(directory, device, verify)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), as uvicorn would bind it; a busy port is a one-line error."""
    from llmkit.errors import LlmkitError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart may reuse the port
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise LlmkitError(f"port {port} on {host} is in use", "pass another --port (0 picks a free one)") from None
        raise LlmkitError(f"cannot listen on {host}:{port}: {err.strerror or err}", "check --host and --port") from None
    return sock


def serve_on(server, sock: socket.socket) -> None:
    """Run uvicorn's ``server`` on the bound ``sock`` until it stops (a seam for tests)."""
    with sock:
        server.run(sockets=[sock])


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
