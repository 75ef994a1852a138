"""The corpora, tokenizers and token directories of bench/domain_adaptation.py (docs/domain_adaptation.md).

A "general" corpus from the project's data that is not domain text (GENERAL, with each source's license
from its SOURCE.md) and the three domain corpora of data/domain (DOMAINS), each split into a fixed
held-out part and a training part written one document per line; the tokenizers (one shared by every
run, and general- vs domain-trained ones for tokens per word); the `llmkit data tokenize` directories
the runs train on; and the held-out texts as token ids.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError
from llmkit.files import atomic_write

if TYPE_CHECKING:
    from domain_adaptation import Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
# The general corpus: everything under data/ that is not domain text and reads as English prose or
# dialogue (WNUT-17's tweets are token-per-line NER data, SST-2 repeats rt-polarity's sentences as phrases).
GENERAL = {
    "shakespeare": ("tinyshakespeare/input.txt.gz", "public domain text; char-rnn repository MIT"),
    "dialogsum": ("dialogsum/dialogsum.train.jsonl.gz", "CC BY-NC-SA 4.0: non-commercial"),
    "fra-eng (English side)": ("translation/fra-eng/fra.txt.gz", "CC BY 2.0 (Tatoeba, attribution)"),
    "rt-polarity": ("sentiment/rt-polarity", "unclear: no license stated (research use)"),
}
DOMAINS = {
    "legal": ("domain/legal_scotus/scotus_ot2019.txt.gz", "public domain (US Supreme Court opinions)"),
    "medical": ("domain/medical_medquad/medquad.txt.gz", "CC BY 4.0 (MedQuAD)"),
    "finance": ("domain/finance_fomc/fomc_minutes.txt.gz", "unclear: FOMC minutes, treated as public domain"),
}
EVAL_SETS = (*DOMAINS, "general")
DOMAIN_SHARE = 0.51  # BloombergGPT: 51% financial, 49% public data
_TERM = re.compile(r"[a-z]+(?:-[a-z]+)*")  # a domain term in the tokens-per-word table


# ---- 1. the corpora ---------------------------------------------------------------------------
def _lines(path: Path) -> Iterator[str]:
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def _collapse(text: str) -> str:
    """One line: runs of whitespace (newlines too) -> one space, as data/domain's corpora are stored."""
    return " ".join(text.split())


def _grouped(units: list[str], min_words: int) -> list[str]:
    """Consecutive units joined into documents of at least ``min_words`` words (the last may be shorter)."""
    docs, current, words = [], [], 0
    for unit in units:
        current.append(unit)
        words += len(unit.split())
        if words >= min_words:
            docs.append(_collapse(" ".join(current)))
            current, words = [], 0
    if current:
        docs.append(_collapse(" ".join(current)))
    return docs


def general_documents(name: str) -> list[str]:
    """The documents of one general source, in a fixed order (a seeded shuffle where the file is sorted).

    Shakespeare: consecutive speeches up to >= 200 words; DialogSum: a dialogue and its summary;
    fra-eng: its distinct English sentences (the file is sorted by length: shuffled first), 20 per
    document; rt-polarity: its review snippets, positive and negative shuffled together, 10 per document.
    """
    path = DATA / GENERAL[name][0]
    if name == "shakespeare":
        speeches = [s for s in re.split(r"\n\s*\n", "\n".join(_lines(path))) if s.strip()]
        return _grouped(speeches, 200)
    if name == "dialogsum":
        records = (json.loads(line) for line in _lines(path) if line.strip())
        return [
            _collapse(r["dialogue"].replace("#Person1#", "A").replace("#Person2#", "B") + " " + r["summary"])
            for r in records
        ]
    if name == "fra-eng (English side)":
        english = list(dict.fromkeys(line.split("\t")[0] for line in _lines(path) if "\t" in line))
        random.Random(0).shuffle(english)
        return [_collapse(" ".join(english[i : i + 20])) for i in range(0, len(english), 20)]
    if name == "rt-polarity":
        snippets = [s for kind in ("pos", "neg") for s in _lines(path / f"rt-polarity.{kind}.gz") if s.strip()]
        random.Random(0).shuffle(snippets)
        return [_collapse(" ".join(snippets[i : i + 10])) for i in range(0, len(snippets), 10)]
    raise LlmkitError(f"unknown general source {name!r}", f"choose one of {', '.join(GENERAL)}")


def domain_documents(name: str) -> list[str]:
    """A domain corpus's documents: one per line (data/README.md's convention)."""
    return [line for line in _lines(DATA / DOMAINS[name][0]) if line.strip()]


def heldout_key(source: str, text: str) -> float:
    """A number in [0, 1) fixed by the source's name and the document's text: below the held-out
    fraction, the document is held out. The same for any seed, size or order, and a document that
    occurs twice lands on one side only."""
    digest = hashlib.blake2b(f"{source}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def split_documents(
    source: str, docs: list[str], fraction: float, seed: int = 0, train_words: int | None = None
) -> tuple[list[str], list[str]]:
    """(train, heldout) of one source: held out by :func:`heldout_key`, in the order of that key; the
    training part shuffled with ``seed`` and cut to ``train_words`` words (None: all), the held-out
    part then cut in proportion (``fraction / (1 - fraction)`` of ``train_words``), so a large source
    cut for training does not fill the held-out text. The held-out part does not depend on ``seed``.
    A document that occurs twice is kept once."""
    keyed = sorted((heldout_key(source, d), d) for d in dict.fromkeys(docs))
    heldout = [d for k, d in keyed if k < fraction]
    train = [d for k, d in keyed if k >= fraction]
    random.Random(seed).shuffle(train)
    if train_words is not None:
        train = _first_words(train, train_words)
        heldout = _first_words(heldout, round(train_words * fraction / (1 - fraction)))
    return train, heldout


def _first_words(docs: list[str], words: int) -> list[str]:
    """The first documents, until they hold at least ``words`` words."""
    kept, seen = [], 0
    for doc in docs:
        if seen >= words:
            break
        kept.append(doc)
        seen += len(doc.split())
    return kept


def assemble_corpora(out: Path, settings: Settings) -> dict[str, Any]:
    """Write OUT/corpus/{general,legal,medical,finance}.{train,heldout}.txt (one document per line) and
    corpus.json (documents and words per source and split); return corpus.json's content.

    The general training part interleaves its sources (one shuffle of all their documents), so a
    token cap takes every source in proportion."""
    corpus = out / "corpus"
    described = corpus / "corpus.json"
    if described.is_file():
        return json.loads(described.read_text())
    corpus.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"general_sources": {}, "corpora": {}}
    general_train, general_heldout = [], []
    for name in GENERAL:
        train, heldout = split_documents(
            name, general_documents(name), settings.heldout_fraction, 0, settings.general_words
        )
        summary["general_sources"][name] = {**_counts(train, heldout), "license": GENERAL[name][1]}
        general_train += train
        general_heldout += heldout
    random.Random(0).shuffle(general_train)
    # held-out general text in a fixed interleaving too, so its first tokens hold every source
    general_heldout.sort(key=lambda d: heldout_key("general", d))
    parts = {"general": (general_train, general_heldout)}
    for name in DOMAINS:
        parts[name] = split_documents(name, domain_documents(name), settings.heldout_fraction, 0)
    for name, (train, heldout) in parts.items():
        atomic_write(corpus / f"{name}.train.txt", "".join(d + "\n" for d in train))
        atomic_write(corpus / f"{name}.heldout.txt", "".join(d + "\n" for d in heldout))
        summary["corpora"][name] = _counts(train, heldout)
    atomic_write(described, json.dumps(summary, indent=2) + "\n")
    return summary


def _counts(train: list[str], heldout: list[str]) -> dict[str, int]:
    return {
        "train_documents": len(train),
        "train_words": sum(len(d.split()) for d in train),
        "heldout_documents": len(heldout),
        "heldout_words": sum(len(d.split()) for d in heldout),
    }


def corpus_file(out: Path, name: str, split: str) -> Path:
    return out / "corpus" / f"{name}.{split}.txt"


# ---- 2. tokenizers ----------------------------------------------------------------------------
def first_documents(path: Path, chars: int) -> Iterator[str]:
    """The first documents of a corpus file, up to about ``chars`` characters."""
    seen = 0
    for line in _lines(path):
        if seen >= chars:
            return
        seen += len(line)
        yield line


def train_bpe(out: Path, name: str, texts: Iterator[str], vocab: int) -> Path:
    """A byte-level BPE tokenizer (GPT-2's kind, `llmkit tokenizer train`'s trainer) in OUT/tokenizers/NAME."""
    from llmkit.data.tokenizer_train import train_tokenizer

    directory = out / "tokenizers" / name
    if not (directory / "tokenizer.json").is_file():
        train_tokenizer(texts, "bpe", vocab).save(directory)
    return directory


def shared_tokenizer(out: Path, settings: Settings) -> Path:
    """Every run's tokenizer: trained on the same number of characters of each training part, so no
    corpus owns the vocabulary (BloombergGPT trained its tokenizer on its mix too)."""
    names = ("general", *DOMAINS)
    texts = (d for n in names for d in first_documents(corpus_file(out, n, "train"), settings.tokenizer_chars))
    return train_bpe(out, f"shared-{settings.vocab}", texts, settings.vocab)


def tokenizer_comparison(out: Path, settings: Settings) -> dict[str, Any]:
    """Tokens per word of each held-out text under a general-trained and each domain-trained tokenizer
    (``compare_vocab`` ids each, trained on equal amounts of text) and under the runs' shared one; and
    the domain words the general tokenizer splits most, with their pieces under the domain's."""
    from llmkit.curate.stats import corpus_stats
    from llmkit.data.tokenizer import Tokenizer

    path = out / "tokenizers.json"
    if path.is_file():
        return json.loads(path.read_text())
    chars, vocab = settings.tokenizer_chars, settings.compare_vocab
    tokenizers = {
        name: train_bpe(out, f"{name}-{vocab}", first_documents(corpus_file(out, name, "train"), chars), vocab)
        for name in ("general", *DOMAINS)
    }
    loaded = {name: Tokenizer.from_dir(d) for name, d in tokenizers.items()}
    shared = Tokenizer.from_dir(out / "tokenizers" / f"shared-{settings.vocab}")
    report: dict[str, Any] = {"vocab": vocab, "shared_vocab": settings.vocab, "texts": {}}
    for text in EVAL_SETS:
        heldout = str(corpus_file(out, text, "heldout"))
        under_general = corpus_stats(heldout, loaded["general"], line_documents=True)
        entry = {
            "words": under_general.words,
            "general": round(under_general.tokens_per_word, 4),
            "shared": round(corpus_stats(heldout, shared, line_documents=True).tokens_per_word, 4),
        }
        if text in DOMAINS:
            under_domain = corpus_stats(heldout, loaded[text], line_documents=True)
            entry["domain"] = round(under_domain.tokens_per_word, 4)
            # lower-case words of letters (and inner hyphens): the domain's vocabulary, not names or rules (____)
            terms = [r for r in under_general.most_split(top=10**6, min_count=5) if _TERM.fullmatch(r[0])]
            entry["most_split"] = [
                {"word": w, "general": pieces, "domain": under_domain.pieces[w], "count": count}
                for w, pieces, count in terms[:6]
            ]
        report["texts"][text] = entry
    atomic_write(path, json.dumps(report, indent=2) + "\n")
    return report


# ---- 3. token directories ---------------------------------------------------------------------
def data_sources(out: Path) -> dict[str, list[tuple[str, float]]]:
    """The token directories the runs train on, as `llmkit data tokenize` sources with weights: every
    one weighted, so every one is cut (or repeated) to exactly ``pool_tokens`` training tokens."""
    general = str(corpus_file(out, "general", "train"))
    sources = {"general": [(general, 1.0)]}
    for name in DOMAINS:
        domain = str(corpus_file(out, name, "train"))
        sources[name] = [(domain, 1.0)]
        sources[f"{name}-mix"] = [(domain, DOMAIN_SHARE), (general, 1 - DOMAIN_SHARE)]
    return sources


def tokenize_all(out: Path, settings: Settings) -> dict[str, dict[str, Any]]:
    """``tokenize_corpus`` of every source list of :func:`data_sources` into OUT/data/NAME; their meta.json."""
    from llmkit.data.shards import tokenize_corpus
    from llmkit.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(shared_tokenizer(out, settings))
    metas = {}
    for name, sources in data_sources(out).items():
        directory = out / "data" / name
        if not (directory / "meta.json").is_file():
            tokenize_corpus(
                sources,
                tokenizer,
                directory,
                val_fraction=0.02,
                line_documents=True,
                max_tokens=settings.pool_tokens,
                progress=False,
            )
        metas[name] = json.loads((directory / "meta.json").read_text())
    return metas


def heldout_ids(out: Path, settings: Settings) -> dict[str, list[int]]:
    """Each held-out text as the shared tokenizer's ids: its documents in order, at most
    ``eval_doc_tokens`` of each, each ended by the end-of-text id, ``eval_tokens`` in all."""
    from llmkit.data.tokenizer import Tokenizer

    path = out / "heldout_ids.json"
    if path.is_file():
        return json.loads(path.read_text())
    tokenizer = Tokenizer.from_dir(shared_tokenizer(out, settings))
    found = {}
    for name in EVAL_SETS:
        ids: list[int] = []
        for doc in _lines(corpus_file(out, name, "heldout")):
            if len(ids) >= settings.eval_tokens:
                break
            ids += tokenizer.encode(doc, add_special_tokens=False)[: settings.eval_doc_tokens]
            ids.append(tokenizer.eos_token_id)
        if len(ids) < settings.eval_tokens:
            raise LlmkitError(
                f"held-out {name} text has {len(ids)} tokens, fewer than eval_tokens {settings.eval_tokens}",
                "raise heldout_fraction or lower eval_tokens",
            )
        found[name] = ids[: settings.eval_tokens]
    atomic_write(path, json.dumps(found) + "\n")
    return found


def render_tokenizers(report: dict[str, Any]) -> str:
    v, s = report["vocab"], report["shared_vocab"]
    lines = [
        f"| held-out text | general-trained ({v:,}) | domain-trained ({v:,}) | shared, the runs' ({s:,}) "
        "| most-split words: pieces general -> domain |",
        "|---|---:|---:|---:|---|",
    ]
    for text, e in report["texts"].items():
        split = ", ".join(f"{w['word']} {w['general']}->{w['domain']}" for w in e.get("most_split", []))
        domain = f"{e['domain']:.3f}" if "domain" in e else "–"
        lines.append(f"| {text} | {e['general']:.3f} | {domain} | {e['shared']:.3f} | {split} |")
    return "\n".join(lines)
