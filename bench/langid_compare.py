"""Language identification for `llmkit data curate`: py3langid against lingua-language-detector.

Accuracy and speed on English, French and German text, at two lengths: sentences (6-20 words) and
paragraphs (8 sentences, about 60-120 words; curated documents are longer still). Both libraries
run over all their languages, as the curation does, on one thread, after a warm-up call.

Text: English and French from the project's fra-eng pairs (data/translation, Tatoeba, CC BY 2.0) and
English from the MedQuAD corpus (data/domain); German is not in data/, so it comes from the German
translations in Debian's gettext catalogs (/usr/share/locale/de/LC_MESSAGES/*.mo, real translated
program messages) where the machine has them; without them German is left out and the run says so.

    .venv/bin/pip install lingua-language-detector==2.1.1   # the peer, not a dependency of llmkit (96 MB)
    .venv/bin/python bench/langid_compare.py [--per-language 400] [--seed 0] [--lingua-low-accuracy]
"""

from __future__ import annotations

import argparse
import gettext
import glob
import gzip
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fra_eng() -> tuple[list[str], list[str]]:
    en, fr = [], []
    with gzip.open(ROOT / "data/translation/fra-eng/fra.txt.gz", "rt", encoding="utf-8") as file:
        for line in file:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2 and 6 <= len(parts[0].split()) <= 20:
                en.append(parts[0])
                fr.append(parts[1])
    return en, fr


def _medquad_sentences() -> list[str]:
    out = []
    with gzip.open(ROOT / "data/domain/medical_medquad/medquad.txt.gz", "rt", encoding="utf-8") as file:
        for line in file:
            out += [s.strip() for s in line.split(". ") if 6 <= len(s.split()) <= 20]
    return out


def _german() -> list[str]:
    out = set()
    for path in sorted(glob.glob("/usr/share/locale/de/LC_MESSAGES/*.mo")):
        try:
            with open(path, "rb") as file:
                catalog = gettext.GNUTranslations(file)._catalog
        except (OSError, UnicodeDecodeError):
            continue
        for key, value in catalog.items():
            if isinstance(key, str) and isinstance(value, str) and "%" not in value and "\\" not in value:
                text = " ".join(value.split())
                if 6 <= len(text.split()) <= 20 and value != key:
                    out.add(text)
    return sorted(out)


def samples(per_language: int, seed: int) -> dict[str, dict[str, list[str]]]:
    """{"sentence" | "paragraph": {lang: texts}}: sentences drawn at random, paragraphs of 8 drawn sentences."""
    rng = random.Random(seed)
    en, fr = _fra_eng()
    pools = {"en": en + _medquad_sentences(), "fr": fr, "de": _german()}
    pools = {lang: pool for lang, pool in pools.items() if pool}
    out: dict[str, dict[str, list[str]]] = {"sentence": {}, "paragraph": {}}
    for lang, pool in pools.items():
        out["sentence"][lang] = rng.sample(pool, per_language)
        out["paragraph"][lang] = [" ".join(rng.sample(pool, 8)) for _ in range(per_language)]
    return out


def py3langid_detector():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return lambda text: identifier.classify(text)[0]


def lingua_detector(low_accuracy: bool):
    from lingua import LanguageDetectorBuilder

    builder = LanguageDetectorBuilder.from_all_languages()
    if low_accuracy:
        builder = builder.with_low_accuracy_mode()
    detector = builder.build()

    def detect(text: str) -> str:
        language = detector.detect_language_of(text)
        return language.iso_code_639_1.name.lower() if language is not None else "und"

    return detect


def measure(detect, texts: dict[str, list[str]]) -> dict:
    """Accuracy per language and overall; texts and characters per second (detection only)."""
    detect("warm-up call so lazy model loading is not timed")
    correct, total, chars, seconds = {}, 0, 0, 0.0
    for lang, batch in texts.items():
        start = time.perf_counter()
        predictions = [detect(text) for text in batch]
        seconds += time.perf_counter() - start
        correct[lang] = sum(p == lang for p in predictions) / len(batch)
        total += len(batch)
        chars += sum(map(len, batch))
    accuracy = sum(correct[lang] * len(texts[lang]) for lang in texts) / total
    return {
        "accuracy": accuracy,
        "per_language": correct,
        "texts_per_s": total / seconds,
        "chars_per_s": chars / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-language", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lingua-low-accuracy", action="store_true", help="lingua's faster low-accuracy mode")
    args = parser.parse_args()
    data = samples(args.per_language, args.seed)
    langs = ", ".join(data["sentence"])
    if "de" not in data["sentence"]:
        print("no German gettext catalogs on this machine: German left out")
    print(f"{args.per_language} texts per language ({langs}) and length, seed {args.seed}")
    start = time.perf_counter()
    detectors = {"py3langid": py3langid_detector()}
    print(f"py3langid loaded in {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    detectors["lingua" + (" (low accuracy)" if args.lingua_low_accuracy else "")] = lingua_detector(
        args.lingua_low_accuracy
    )
    print(f"lingua built in {time.perf_counter() - start:.2f} s (models load lazily, on the warm-up call)")
    print(f"{'library':<24}{'length':<11}{'accuracy':>9}  {'per language':<30}{'texts/s':>9}{'MB/s':>8}")
    for name, detect in detectors.items():
        for length, texts in data.items():
            r = measure(detect, texts)
            per = " ".join(f"{lang} {acc:.3f}" for lang, acc in r["per_language"].items())
            print(
                f"{name:<24}{length:<11}{r['accuracy']:>9.3f}  {per:<30}{r['texts_per_s']:>9.0f}"
                f"{r['chars_per_s'] / 1e6:>8.3f}"
            )


if __name__ == "__main__":
    main()
