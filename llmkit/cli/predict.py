"""`llmkit predict`: a fine-tuned classifier's labels or entities for texts (a thin call into llmkit.predict)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_DESCRIPTION = """\
Predict with a checkpoint that has a classification head (llmkit finetune's classify or tokens task,
or a converted BertFor*/LlamaForSequenceClassification), as transformers' pipelines do.

Sequence classifiers: each text's best label and its probability (--top-k K: the K best); softmax over
the labels, or a sigmoid for a single-label head (the text-classification pipeline's default). --json
prints one JSON object per text with every label's score.

Token classifiers: each text's entities with their type, words, character span (start-end into the
text) and score, grouped as the token-classification pipeline's aggregation_strategy="simple" does
(adjacent tokens of one type, a B- tag starting a new entity, O dropped). --json adds every token's
span, label and per-label probabilities.

Texts longer than the model's context window are cut to it (special tokens kept). --file reads one
text per line, or JSONL with a "text" field; texts run in batches of similar length, with a progress bar
on stderr, and results print in input order.
"""

_EPILOG = """\
examples:
  llmkit predict runs/sst2-minilm/best "a gorgeous, witty film" "dull and overlong"
  llmkit predict runs/sst2-minilm/best --file reviews.txt --json --out predictions.jsonl
  llmkit predict runs/wnut17-minilm/best "Taylor Swift played Madison Square Garden"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="labels with probabilities, or entities with spans, from a fine-tuned classifier",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="llmkit checkpoint directory with a classification head")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (or --file)")
    p.add_argument("--file", type=Path, metavar="F", help="one text per line, or .jsonl with a 'text' field")
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="sequence classifiers: labels shown (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per text, with every score")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the output to FILE (atomically), not stdout")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="texts per forward pass (default 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for --file")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    p.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast the weights (default: as stored)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.cli._options import require_positive
    from llmkit.errors import LlmkitError
    from llmkit.files import atomic_write
    from llmkit.inference.loading import load_model
    from llmkit.predict import predict
    from llmkit.predict.batches import read_texts
    from llmkit.predict.output import prediction_lines
    from llmkit.predict.predictor import require_head

    if bool(args.texts) == (args.file is not None):
        raise LlmkitError("give TEXT arguments or --file, not both or neither", 'e.g. llmkit predict MODEL "some text"')
    require_positive("--top-k", args.top_k)
    require_positive("--batch-size", args.batch_size)
    texts = read_texts(args.file) if args.file is not None else args.texts
    model = load_model(args.model, args.device, args.dtype, verify=not args.no_verify)
    require_head(model, args.model)
    progress = args.file is not None and not args.no_progress
    lines = prediction_lines(predict(model, texts, args.batch_size, progress), args.json, args.top_k)
    if args.out is not None:
        atomic_write(args.out, "".join(line + "\n" for line in lines))
        print(f"wrote {len(texts)} predictions to {args.out}", file=sys.stderr)
        return
    for line in lines:
        print(line)
