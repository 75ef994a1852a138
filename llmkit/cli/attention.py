"""`llmkit attention`: attention heatmaps of one head or all heads of a layer, and the raw weights."""

from __future__ import annotations

import argparse

from llmkit.cli._viz import add_device_flag, load_model, model_name

_DESCRIPTION = """\
Draw which tokens attend to which in TEXT: a heatmap per head with the attending tokens (queries)
down the side and the tokens attended to (keys) along the bottom. Each row is one token's softmax
weights over the tokens it may see, and sums to 1. One head (--layer, --head), or a grid of every
head of a layer (--all), on one colour scale. --weights writes the numbers shown.

The maps come from one forward pass with output_attentions=True: that call computes attention as
an explicit softmax so the weights exist as a tensor; generation and training keep the fast fused
(SDPA) kernel, which never materializes them.

Kinds (--kind): encoder = bidirectional self-attention (BERT; T5's encoder over TEXT), decoder =
causal self-attention (GPT-2/Llama over TEXT; T5's decoder over --target), cross = T5's decoder
tokens (--target) attending to the encoder's tokens (TEXT). The default is the model's own stack:
decoder for decoder-only models, encoder otherwise. For T5 the decoder reads the start token and
then --target, as in training (teacher forcing).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention",
        help="attention heatmaps (one head or all heads of a layer) with token labels; raw weights",
        description=_DESCRIPTION,
        epilog='examples:\n  llmkit attention runs/quickstart/model "for item in items:" --all --out attn.png\n'
        '  llmkit attention t5-model "translate: the cat" --kind cross --target "le chat" --out cross.png',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="llmkit checkpoint directory (with its tokenizer)")
    p.add_argument("text", metavar="TEXT", help="the text the model reads (the encoder's input for T5)")
    p.add_argument("--out", metavar="PNG", help="write the heatmap(s) to this .png")
    p.add_argument(
        "--layer", type=int, default=-1, metavar="L", help="layer, from 0; negative counts from the last (default -1)"
    )
    heads = p.add_mutually_exclusive_group()
    heads.add_argument("--head", type=int, default=0, metavar="H", help="head, from 0 (default 0)")
    heads.add_argument("--all", action="store_true", help="every head of the layer, as a grid")
    p.add_argument(
        "--kind",
        choices=("encoder", "decoder", "cross"),
        default=None,
        help="which attention (see above; default: decoder for decoder-only models, encoder otherwise)",
    )
    p.add_argument("--target", metavar="TEXT", help="T5: the decoder's text, needed for --kind decoder and cross")
    p.add_argument(
        "--weights", metavar="FILE", help="write the weights shown: .json (with tokens) or .npy (heads, queries, keys)"
    )
    p.add_argument("--no-special", action="store_true", help="leave out [CLS]/[SEP], </s> and the like")
    add_device_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.errors import LlmkitError
    from llmkit.viz import attention as att
    from llmkit.viz.style import save_png

    if not args.out and not args.weights:
        raise LlmkitError("nothing to write", "give --out map.png and/or --weights weights.json")
    model = load_model(args.model, args.device, verify=not args.no_verify)
    kind = args.kind or att.default_kind(model.config.family)
    if args.target is not None and model.config.family != "encoder_decoder":
        raise LlmkitError("--target is the decoder text of an encoder-decoder (T5) model", "drop --target")
    ids, queries, keys, decoder_ids = _inputs(model, args.text, args.target, kind, args.no_special)
    maps = att.attention_maps(model, ids, kind, queries, keys, decoder_ids)
    weights, heads, layer = maps.select(args.layer, None if args.all else args.head)
    name = model_name(args.model)
    if args.out:
        title = att.attention_title(name, kind, layer, heads)
        print(f"wrote {save_png(att.draw_attention(maps, layer, heads, title), args.out)}: {title}")
    if args.weights:
        path = att.save_weights(args.weights, att.weights_record(maps, layer, heads, name))
        print(f"wrote {path}: weights of shape {tuple(weights.shape)} (heads, queries, keys)")
    if len(heads) == 1 and len(maps.query_labels) <= 64:
        print(f"most attended token per query (layer {layer}, head {heads[0]}):")
        for i, row in enumerate(weights[0]):
            j = int(row.argmax())
            print(f"  {i:>3} {maps.query_labels[i]!r:<16} -> {j:>3} {maps.key_labels[j]!r:<16} {float(row[j]):.2f}")


def _inputs(model, text: str, target: str | None, kind: str, no_special: bool) -> tuple:
    """(input ids, query labels, key labels, decoder ids) for ``attention_maps``."""
    from llmkit.viz.tokens import token_labels, token_spans

    spans = token_spans(model.tokenizer, text, add_special_tokens=not no_special)
    ids, labels = [s.id for s in spans], token_labels(spans)
    if model.config.family != "encoder_decoder" or kind == "encoder":
        return ids, labels, labels, None
    from llmkit.errors import LlmkitError

    if target is None:
        raise LlmkitError(f"--kind {kind} of a T5 model needs the decoder's text", 'give it with --target "TEXT"')
    # the decoder reads the start token, then the target (teacher forcing, as in training)
    start = model.config.decoder_start_token_id
    target_spans = token_spans(model.tokenizer, target, add_special_tokens=False)
    decoder_ids = [start, *(s.id for s in target_spans)]
    decoder_labels = [model.tokenizer.id_to_token(start) or str(start), *token_labels(target_spans)]
    return ids, decoder_labels, (decoder_labels if kind == "decoder" else labels), decoder_ids
