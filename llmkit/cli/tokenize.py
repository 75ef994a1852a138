"""`llmkit tokenize`: the tokens of a text with their ids and byte spans, and how densely they pack it."""

from __future__ import annotations

import argparse
import json

from llmkit.cli._viz import load_tokenizer, tokenizer_kind

_DESCRIPTION = """\
Show the pieces a model's tokenizer cuts TEXT into: each token's id, its vocabulary string, the
input it covers and that input's byte span (offsets into the UTF-8 text), then counts: tokens,
words, characters, bytes, tokens per word, the words split into several pieces, and how much of
the model's context window the text fills.

Byte spans reassemble the input exactly. For byte-level BPE (GPT-2, Llama 3) they come from each
token's own bytes, so a character split over two tokens (é is 2 bytes, an emoji 4) shows which
bytes each holds, as <0xC3>. For WordPiece and Unigram they come from the character offsets the
tokenizer reports, so a lowercased or accent-stripped piece still points at the original text.
Special tokens the tokenizer adds ([CLS], [SEP], </s>) cover no input: their span is empty.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize",
        help="show a text's tokens, ids and byte spans, and token/word/character counts",
        description=_DESCRIPTION,
        epilog='example: llmkit tokenize runs/quickstart/model "The tokenizer splits naïve words."',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model", metavar="MODEL", help="llmkit checkpoint directory (uses its tokenizer.json) or a tokenizer directory"
    )
    p.add_argument("text", metavar="TEXT", help="the text to tokenize")
    p.add_argument("--no-special", action="store_true", help="do not add [CLS]/[SEP], </s> and the like")
    p.add_argument("--json", action="store_true", help="print one JSON object: tokens with spans, and the counts")
    p.add_argument(
        "--plot", metavar="PNG", help="also draw the tokens as boxes (label above, id below) with the counts, as a .png"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.viz.tokens import token_spans, token_stats

    tokenizer, cfg = load_tokenizer(args.model)
    spans = token_spans(tokenizer, args.text, add_special_tokens=not args.no_special)
    stats = token_stats(args.text, spans)
    window = cfg.max_seq_len if cfg is not None else None
    if args.json:
        _print_json(args.model, tokenizer, spans, stats, window)
    else:
        _print_table(args.model, tokenizer, spans, stats, window)
    if args.plot:
        from llmkit.cli._viz import model_name
        from llmkit.viz.style import save_png
        from llmkit.viz.tokens import draw_tokens

        title = f"{model_name(args.model)}: {tokenizer_kind(tokenizer)} tokens of the text (id below each)"
        path = save_png(draw_tokens(spans, title, _summary(stats, window)), args.plot)
        if not args.json:
            print(f"wrote {path}")


def _print_json(model: str, tokenizer, spans, stats, window: int | None) -> None:
    from dataclasses import asdict

    counts = {k: v for k, v in asdict(stats).items() if k != "split_words"}
    report = {
        "model": model,
        "tokenizer": tokenizer_kind(tokenizer),
        "tokens": [asdict(s) for s in spans],
        "counts": {**counts, "tokens_per_word": stats.tokens_per_word, "context_window": window},
        "split_words": [{"word": w, "pieces": p} for w, p in stats.split_words],
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))


def _print_table(model: str, tokenizer, spans, stats, window: int | None) -> None:
    print(f"{model}: {tokenizer_kind(tokenizer)} tokenizer, vocabulary {tokenizer.vocab_size:,}")
    print(f"  {'#':>4} {'id':>7}  {'token':<20} {'text':<20} bytes")
    for s in spans:
        where = "(none: added)" if s.special else f"{s.start}-{s.end}"
        token, text = json.dumps(s.piece, ensure_ascii=False), json.dumps(s.text, ensure_ascii=False)
        print(f"  {s.index:>4} {s.id:>7}  {token:<20} {'' if s.special else text:<20} {where}")
    print(_summary(stats, window))
    if stats.split_words:
        shown = ", ".join(f"{w} = {' | '.join(p)}" for w, p in stats.split_words[:12])
        more = f" (+{len(stats.split_words) - 12} more)" if len(stats.split_words) > 12 else ""
        print(f"split words ({len(stats.split_words)} of {stats.words}): {shown}{more}")
    else:
        print(f"split words: none, every one of the {stats.words} words is a single token")


def _summary(stats, window: int | None) -> str:
    special = f" ({stats.special} special)" if stats.special else ""
    line = (
        f"{stats.tokens} tokens{special} | {stats.words} words | {stats.characters} characters | "
        f"{stats.bytes} bytes | {stats.tokens_per_word:.2f} tokens per word"
    )
    if window:
        line += f" | context {stats.tokens} of {window} tokens ({stats.tokens / window:.1%})"
    return line
