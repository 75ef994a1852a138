"""`llmkit embeddings`: how close words sit in a model's vector space; a table and a 2-D picture."""

from __future__ import annotations

import argparse
import json

from llmkit.cli._viz import add_device_flag, load_model, model_name

_DESCRIPTION = """\
Compare WORDs by their vectors in the model: the cosine similarity of every pair (the cosine of
the angle between the two vectors: 1 same direction, 0 unrelated, -1 opposite) and the angle in
degrees, and with --plot a PNG of the words on the vectors' first two principal components (PCA,
centred, via SVD) beside the similarity matrix.

Vectors: by default each word's input embedding, the row of the token embedding matrix. A word the
tokenizer cuts into several pieces gets the mean of its pieces' rows (the output lists the
pieces). Byte-level BPE has different tokens for "cat" and " cat"; words are encoded as they
appear inside a sentence, after a space (--as-is encodes them bare).

With --contextual SENTENCE: each word's vector in that sentence instead, the model's last hidden
state averaged over the tokens that cover the word (its first whole-word occurrence). A decoder
sees only the words before it; an encoder (or T5's encoder) the whole sentence.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embeddings",
        help="cosine similarity and angle between words' embeddings, and a 2-D PCA picture",
        description=_DESCRIPTION,
        epilog="examples:\n  llmkit embeddings runs/quickstart/model list dict tuple string file --plot emb.png\n"
        '  llmkit embeddings runs/quickstart/model file path --contextual "open the file at this path"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="llmkit checkpoint directory (with its tokenizer)")
    p.add_argument("words", nargs="+", metavar="WORD", help="two or more words to compare")
    p.add_argument("--plot", metavar="PNG", help="write the PCA scatter and similarity matrix to this .png")
    p.add_argument(
        "--contextual", metavar="SENTENCE", help="use the words' last hidden states in SENTENCE, not input embeddings"
    )
    p.add_argument("--as-is", action="store_true", help="byte-level BPE: encode each word without a leading space")
    p.add_argument(
        "--single-token", action="store_true", help="refuse words that are not one token (instead of averaging)"
    )
    p.add_argument("--json", action="store_true", help="print JSON: words, pieces, cosine and angle matrices")
    add_device_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.errors import LlmkitError
    from llmkit.viz import embeddings as emb
    from llmkit.viz.style import save_png, shorten

    if len(set(args.words)) < 2:
        raise LlmkitError("give at least two different words to compare", "e.g. llmkit embeddings MODEL cat dog")
    if args.contextual is not None and (args.as_is or args.single_token):
        raise LlmkitError("--as-is and --single-token choose input-embedding pieces", "drop them with --contextual")
    model = load_model(args.model, args.device, verify=not args.no_verify)
    if args.contextual is not None:
        vectors = emb.contextual_vectors(model, model.tokenizer, args.contextual, args.words)
    else:
        vectors = emb.input_vectors(model, model.tokenizer, args.words, args.as_is, args.single_token)
    cos = emb.cosine_matrix(vectors.vectors)
    if args.json:
        report = {"model": args.model, "vectors": vectors.source, "words": vectors.words, "pieces": vectors.pieces,
                  "cosine": cos.tolist(), "angle_degrees": emb.angles_degrees(cos).tolist()}  # fmt: skip
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        how = "mean over its tokens" if args.contextual is not None else "mean of its pieces' embedding rows"
        print(f"{args.model}: {vectors.source}, {vectors.vectors.shape[1]} dimensions; a word's vector is the {how}")
        for word, pieces in zip(vectors.words, vectors.pieces, strict=True):
            print(f"  {word}: {' | '.join(pieces)}")
        print(emb.similarity_table(vectors))
    if args.plot:
        where = f' in "{args.contextual}"' if args.contextual is not None else ""
        size = f"{len(vectors.words)} words, {vectors.vectors.shape[1]} dimensions"
        title = f"{model_name(args.model)}: {vectors.source}{where} ({size})"
        path = save_png(emb.draw_embeddings(vectors, shorten(title, 110)), args.plot)
        if not args.json:
            print(f"wrote {path}")
