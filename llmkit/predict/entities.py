"""Token classifiers: entities with character spans, grouped as transformers' token-classification pipeline
groups them with ``aggregation_strategy="simple"`` (transformers/pipelines/token_classification.py).

The rule, step by step:
1. softmax over the labels at every token; special tokens ([CLS], [SEP]) are dropped;
2. each token takes its most likely label and that label's probability; its span is its offsets into the
   text, its word the token string (an unknown token's word is the text it covers);
3. consecutive tokens are grouped: a token joins the group before it when its type (the label without
   ``B-``/``I-``; a label without either prefix counts as ``I-`` of itself) is the group's last token's
   type and it is not a ``B-`` token;
4. a group's ``entity_group`` is its first token's label after the first ``-`` (``B-person`` ->
   ``person``), its score the mean of its tokens' scores, its word the tokens joined by the tokenizer's
   decoder (WordPiece: ``##`` pieces glued), its span from the first token's start to the last one's end;
5. groups of type ``O`` are dropped.
Sub-words are not merged into words first (that is what the "first"/"average"/"max" strategies add).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import tokenizers
from torch import nn

from llmkit.predict.batches import DEFAULT_BATCH, encode, logits_per_text
from llmkit.predict.classify import to_scores

IGNORED = ("O",)  # the pipeline's default ignore_labels


@dataclass
class TokenScore:
    """One (non-special) token: its string, span, best label and score, and every label's probability."""

    token: str
    start: int
    end: int
    label: str
    score: float
    scores: list[float]
    unknown: bool = False


@dataclass
class Entity:
    """One entity as the pipeline reports it (``start``/``end``: character offsets into the text)."""

    entity_group: str
    score: float
    word: str
    start: int
    end: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TokenTags:
    """One text's entities and the per-token scores they came from."""

    text: str
    labels: list[str]
    entities: list[Entity]
    tokens: list[TokenScore]
    read: int = 0  # tokens the model read (special tokens included, after truncation)


def _tag(label: str) -> tuple[str, str]:
    """(``B`` or ``I``, type): ``B-x`` -> (B, x), ``I-x`` -> (I, x), anything else -> (I, itself)."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def token_scores(encoding: tokenizers.Encoding, text: str, probs, labels: Sequence[str], unk_id) -> list[TokenScore]:
    """Steps 1-2 of the module docstring for one text (``probs``: (tokens, labels) probabilities)."""
    out = []
    for i, (start, end) in enumerate(encoding.offsets):
        if encoding.special_tokens_mask[i]:
            continue
        row = probs[i].tolist()
        best = max(range(len(row)), key=row.__getitem__)  # the first of equal maxima, as numpy's argmax
        unknown = unk_id is not None and encoding.ids[i] == unk_id
        token = text[start:end] if unknown else encoding.tokens[i]
        out.append(TokenScore(token, start, end, labels[best], row[best], row, unknown))
    return out


def group_simple(tokens: Sequence[TokenScore], join) -> list[Entity]:
    """Steps 3-5 of the module docstring; ``join`` turns a group's token strings into its word."""
    groups: list[list[TokenScore]] = []
    for token in tokens:
        bi, kind = _tag(token.label)
        if groups and kind == _tag(groups[-1][-1].label)[1] and bi != "B":
            groups[-1].append(token)
        else:
            groups.append([token])
    entities = []
    for group in groups:
        name = group[0].label.split("-", 1)[-1]
        if name in IGNORED:
            continue
        score = sum(t.score for t in group) / len(group)
        entities.append(Entity(name, score, join([t.token for t in group]), group[0].start, group[-1].end))
    return entities


def joiner(tokenizer):
    """The tokenizer's decoder over token strings (transformers' convert_tokens_to_string), else spaces."""
    decoder = tokenizer.backend.decoder
    return decoder.decode if decoder is not None else " ".join


def tag_entities(
    model: nn.Module, texts: Sequence[str], batch_size: int = DEFAULT_BATCH, progress: bool = False
) -> list[TokenTags]:
    """Entities of each text, in input order, by the "simple" rule of the module docstring."""
    encodings = encode(model, texts)
    logits = logits_per_text(model, [e.ids for e in encodings], batch_size, progress)
    labels, join, unk = model.config.label_names(), joiner(model.tokenizer), model.tokenizer.unk_token_id
    out = []
    for text, encoding, row in zip(texts, encodings, logits, strict=True):
        tokens = token_scores(encoding, text, to_scores(row, "softmax"), labels, unk)
        out.append(TokenTags(text, labels, group_simple(tokens, join), tokens, len(encoding.ids)))
    return out
