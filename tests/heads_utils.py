"""Shared by the classification-head tests: tiny random transformers classifiers converted to llmkit.

Each model is a transformers BertFor*/LlamaForSequenceClassification with random weights, saved with a
tokenizer trained on the sentences below and converted by ``llmkit.hf.from_hf`` (the path of `llmkit
convert --from-hf`); ``hf`` is the transformers folder a pipeline loads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hf_utils import randomize

SENTENCES = [
    "the film was great and the cast superb",
    "a dull plot , boring and poor",
    "anna and bob flew from paris to rome",
    "carl visited oslo with anna",
    "quite a story",
]
# WNUT-17's tag set: the types with a dash check that a group is named by what follows the first "-"
TAGS = ["O", "B-person", "I-person", "B-location", "I-location", "B-creative-work", "I-creative-work"]
# texts with words outside the tiny vocabulary (## pieces, [UNK]), capitals, punctuation and extra spaces
TEXTS = [
    "the film was great",
    "Anna and Bob flew from Paris to Rome!",
    "carlsberg  in oslo, annabella's story",
    "Zürich ☃ quietly",
    "x",
    "a dull plot , boring and poor but the cast was superb and the story quite great",
]


def wordpiece_tokenizer():
    """A BERT WordPiece tokenizer with a fixed vocabulary (WordPiece training orders equal-count merges
    differently from run to run): the specials, every ASCII letter and digit and its ``##`` twin, a few
    punctuation marks, the words of SENTENCES and some pieces; "carlsberg" or "annabella" split into
    pieces, "Zürich" too (accents are stripped), "☃" is [UNK]."""
    import tokenizers as tk
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    from llmkit.data.tokenizer import Tokenizer, bert_post_processor

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = sorted({w for s in SENTENCES for w in s.split()} | {"anna", "story"})
    pieces = ["##s", "##berg", "##bella", "##ella", "##ich", "##ly", "##et", "zur", "qui", "!", ",", "'", ".", "?"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters)]
    tokens += [t for t in words + pieces if t not in tokens]
    backend = tk.Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.post_processor = bert_post_processor(backend, "[CLS]", "[SEP]")
    return Tokenizer(backend, {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"})


def tokenizers(root: Path):
    """(WordPiece, byte-level BPE): the first fixed, the second trained (BPE training is deterministic)."""
    from llmkit.data.tokenizer_train import train_tokenizer

    return wordpiece_tokenizer(), train_tokenizer(SENTENCES * 20, "bpe", vocab_size=300, min_frequency=1)


def build_heads(root: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (llmkit checkpoint, transformers folder) for: ``bert3`` (3-way sequence classifier, named
    labels), ``bert1`` (one label: sigmoid), ``llama2`` (decoder, last real token), ``tokens`` (BERT token
    classifier with ``TAGS``)."""
    import transformers

    from llmkit.hf import from_hf

    wordpiece, bpe = tokenizers(root)
    bert = dict(vocab_size=wordpiece.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=64)  # fmt: skip
    llama = dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                 tie_word_embeddings=False)  # fmt: skip

    def names(labels):
        return {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}

    specs = {
        "bert3": (transformers.BertForSequenceClassification,
                  transformers.BertConfig(**bert, num_labels=3, **names(["negative", "neutral", "positive"])),
                  wordpiece),
        "bert1": (transformers.BertForSequenceClassification, transformers.BertConfig(**bert, num_labels=1),
                  wordpiece),
        "llama2": (transformers.LlamaForSequenceClassification,
                   transformers.LlamaConfig(**llama, num_labels=2, **names(["neg", "pos"])), bpe),
        "tokens": (transformers.BertForTokenClassification,
                   transformers.BertConfig(**bert, num_labels=len(TAGS), **names(TAGS)), wordpiece),
    }  # fmt: skip
    out = {}
    for name, (cls, config, tokenizer) in specs.items():
        torch.manual_seed(0)
        model = randomize(cls(config))
        with torch.no_grad():
            if name == "bert3":  # the pooled states of random weights differ little: spread the labels and
                model.classifier.weight.mul_(30.0)  # centre them on TEXTS, so that no label wins every text
                model.classifier.bias.zero_()
                logits = [model(torch.tensor([tokenizer.encode(t)])).logits[0] for t in TEXTS]
                model.classifier.bias.sub_(torch.stack(logits).mean(0))
            if name == "tokens":  # random heads tag nearly every token; a bias toward O leaves entities among O runs
                model.classifier.bias[0] += 0.15
        model.save_pretrained(root / f"{name}-hf")
        tokenizer.save(root / f"{name}-hf")
        from_hf(root / f"{name}-hf", root / name)
        out[name] = (root / name, root / f"{name}-hf")
    return out
