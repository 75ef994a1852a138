"""Every rule of `llmkit data curate` on hand-made documents that must pass and documents that must fail."""

from __future__ import annotations

import dataclasses

import pytest

from llmkit.curate import language
from llmkit.curate.config import (
    C4Config,
    CurateConfig,
    EncodingConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    HarmfulConfig,
    LanguageConfig,
    PiiConfig,
    to_toml,
)
from llmkit.curate.harmful import WordList, load_terms
from llmkit.curate.pii import redact
from llmkit.curate.quality import c4, encoding, gopher_quality
from llmkit.curate.repetition import gopher_repetition
from llmkit.curate.text import normalize, sentences
from llmkit.errors import LlmkitError

GOOD = (
    "The river flows through the old town and past the market square.\n"
    "Every morning the farmers bring fresh vegetables, bread and cheese to sell to the people who live nearby.\n"
    "In the afternoon the square is quiet, and children play near the fountain while their parents talk.\n"
    "Visitors often say that the town has kept its character because the residents care about their history.\n"
    "The museum on the hill explains how the bridge was built with stone taken from the valley.\n"
    "Most guides recommend a walk along the water at sunset, when the light turns the walls golden."
)


def test_the_good_document_passes_every_rule():
    assert gopher_quality(GOOD, GopherQualityConfig()) is None
    assert gopher_repetition(GOOD, GopherRepetitionConfig()) is None
    text, reason = c4(GOOD, C4Config())
    assert reason is None and text == GOOD
    assert encoding(GOOD, EncodingConfig()) is None
    assert language.check(GOOD, LanguageConfig())[0] is None
    assert WordList.from_config(HarmfulConfig()).check(GOOD) is None


# --- Gopher quality ----------------------------------------------------------------------------------

_PROSE = "the cat sat on the warm mat and looked at the bird with great interest"  # 15 words, stop words


@pytest.mark.parametrize(
    ("text", "config", "reason"),
    [
        ("The cat sat on the mat and that was that.", {}, "min_words"),
        (GOOD, {"max_words": 50}, "max_words"),
        (" ".join(["a to be of it is an ox"] * 10) + " and the cat.", {}, "min_mean_word_length"),
        (" ".join(["the internationalization of telecommunications infrastructure"] * 12), {}, "max_mean_word_length"),
        (GOOD + " " + "#tag " * 30, {}, "hash_ratio"),
        (GOOD + " " + "wait... " * 30, {}, "ellipsis_ratio"),
        ("\n".join(f"• {_PROSE} number {i}." for i in range(10)), {}, "bullet_lines"),
        ("\n".join(f"{_PROSE} and then..." if i % 2 else f"{_PROSE}." for i in range(10)), {}, "ellipsis_lines"),
        (GOOD + " " + " ".join(f"{i * 37}" for i in range(60)), {}, "alpha_words"),
        (" ".join(["cat dog bird house garden river mountain forest"] * 8) + ".", {}, "stop_words"),
    ],
)
def test_gopher_quality_fails(text, config, reason):
    assert gopher_quality(text, GopherQualityConfig(**config)) == f"gopher_quality.{reason}"


def test_gopher_quality_thresholds_are_the_papers():
    cfg = GopherQualityConfig()
    assert (cfg.min_words, cfg.max_words, cfg.min_mean_word_length, cfg.max_mean_word_length) == (50, 100_000, 3, 10)
    assert (cfg.max_symbol_word_ratio, cfg.max_bullet_lines_ratio, cfg.max_ellipsis_lines_ratio) == (0.1, 0.9, 0.3)
    assert (cfg.min_alpha_words_ratio, cfg.min_stop_words) == (0.8, 2)
    assert cfg.stop_words == ["the", "be", "to", "of", "and", "that", "have", "with"]


def test_alpha_words_whitespace_or_tokens():
    listy = " ".join(["apples, pears; plums. cherries, lemons; melons."] * 10)  # half the tokens are , ; .
    assert gopher_quality(listy + " the and of", GopherQualityConfig(min_words=10)) is None
    reason = gopher_quality(listy + " the and of", GopherQualityConfig(min_words=10, alpha_words="tokens"))
    assert reason == "gopher_quality.alpha_words"


def test_bullets_below_the_threshold_pass():
    text = "\n".join([f"• {_PROSE} number {i}." for i in range(8)] + [f"{_PROSE}.", f"{_PROSE} again."])
    assert gopher_quality(text, GopherQualityConfig()) is None  # 80% bullet lines <= 90%


# --- Gopher repetition -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\n\n".join(["Same paragraph here, again and again."] * 3 + ["A different one."]), "duplicate_paragraphs"),
        ("\n\n".join([*GOOD.splitlines()] + [" ".join(GOOD.splitlines()[:3])] * 2), "duplicate_paragraph_chars"),
        ("\n".join(["Buy now."] * 5 + [f"line {i} is new." for i in range(6)]), "duplicate_lines"),
        (GOOD + "\n" + "\n".join([GOOD.splitlines()[1]] * 2), "duplicate_line_chars"),
        (" ".join(f"big sale w{i}" for i in range(40)) + ".", "top_2gram"),
        (GOOD.replace("\n", " ") + " " + " ".join(GOOD.split()[:12]) * 3, "duplicate_5grams"),
    ],
)
def test_gopher_repetition_fails(text, reason):
    assert gopher_repetition(text, GopherRepetitionConfig()) == f"gopher_repetition.{reason}"


def test_gopher_repetition_passes_a_document_with_one_repeated_line():
    text = GOOD + "\n" + GOOD.splitlines()[0]  # 1 of 7 lines repeated, 5% of the characters
    assert gopher_repetition(text, GopherRepetitionConfig()) is None


def _reference_ngram_chars(tokens: list[str], n: int) -> tuple[int, int]:
    """The top n-gram's characters and the repeated n-grams' characters, counted on tuples of words as datatrove's
    GopherRepetitionFilter does (Counter.most_common; a scan that jumps past each repeat)."""
    from collections import Counter

    grams = list(zip(*(tokens[i:] for i in range(n)), strict=False))
    top = 0
    if len(set(grams)) < len(grams):
        gram, count = Counter(grams).most_common(1)[0]
        top = (sum(map(len, gram)) + n - 1) * count
    seen, repeated, i = set(), 0, 0
    while i < len(grams):
        if grams[i] in seen:
            repeated += sum(map(len, grams[i]))
            i += n
        else:
            seen.add(grams[i])
            i += 1
    return top, repeated


def test_gopher_repetition_counts_equal_a_tuple_of_words_count():
    """The numpy numbering of n-grams (exact, no hashing) gives the reference's figures on random repetitive text,
    ties among equally frequent n-grams included (the first to appear wins)."""
    import random

    import numpy as np

    from llmkit.curate.repetition import _ngram_ids, _repeated_ngram_chars, _top_ngram_chars

    rng = random.Random(0)
    checked = 0
    for _ in range(200):
        vocab = [("w" * rng.randint(1, 4)) + str(i) for i in range(rng.randint(1, 12))]
        tokens = [rng.choice(vocab) for _ in range(rng.randint(2, 120))]
        numbers: dict[str, int] = {}
        ids = np.array([numbers.setdefault(t, len(numbers)) for t in tokens], dtype=np.int64)
        prefix = np.concatenate(([0], np.cumsum([len(t) for t in tokens])))
        grams = ids
        for n in range(2, min(10, len(tokens)) + 1):
            grams, first = _ngram_ids(grams, ids, n, len(numbers))
            ours = (_top_ngram_chars(grams, first, n, prefix), _repeated_ngram_chars(grams, n, prefix))
            assert ours == _reference_ngram_chars(tokens, n), (tokens, n)
            checked += 1
    assert checked > 1000


# --- C4 ----------------------------------------------------------------------------------------------


def test_c4_drops_lines_and_keeps_the_rest():
    noisy = "\n".join(
        [
            "Home | About | Contact",  # no terminal punctuation
            GOOD.splitlines()[0],
            "Please enable JavaScript to view this page.",
            "This site uses cookies to improve your experience.",
            "Read more...",  # an ellipsis is not an end
            "Yes.",  # fewer than 3 words
            *GOOD.splitlines()[1:],
        ]
    )
    text, reason = c4(noisy, C4Config())
    assert reason is None
    assert text == GOOD


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "lorem_ipsum"),
        (GOOD + "\nThe function returns {x: 1} when it is called.", "curly_brace"),
        ("\n".join(GOOD.splitlines()[:3]), "min_sentences"),
        ("Home | About | Contact\nMenu", "no_lines_kept"),
    ],
)
def test_c4_fails(text, reason):
    assert c4(text, C4Config())[1] == f"c4.{reason}"


def test_c4_switches():
    text = GOOD + "\nThe function returns {x: 1} when it is called."
    kept, reason = c4(text, C4Config(curly_brace=False))
    assert reason is None and "{x: 1}" in kept
    assert c4("\n".join(GOOD.splitlines()[:3]), C4Config(min_sentences=0))[1] is None


def test_sentences():
    assert sentences('He said "stop." Then he left! Why? Fine') == ['He said "stop."', "Then he left!", "Why?", "Fine"]


# --- encoding, language, harmful ---------------------------------------------------------------------


def test_mojibake_fails_and_clean_accents_pass():
    broken = GOOD.replace("the", "thé").encode("utf-8").decode("cp1252", errors="replace")
    assert encoding(broken, EncodingConfig()) == "encoding.mojibake"
    assert encoding(GOOD.replace("the", "thé"), EncodingConfig()) is None
    assert encoding(GOOD + "\ufffd" * 5, EncodingConfig()) == "encoding.mojibake"


def test_language_keeps_english_removes_french_and_german():
    french = (
        "La rivière traverse la vieille ville et passe devant la place du marché. Chaque matin, les paysans "
        "apportent des légumes frais, du pain et du fromage pour les vendre aux habitants du quartier."
    )
    german = (
        "Der Fluss fließt durch die Altstadt und am Marktplatz vorbei. Jeden Morgen bringen die Bauern frisches "
        "Gemüse, Brot und Käse, um sie an die Menschen zu verkaufen, die in der Nähe wohnen."
    )
    assert language.check(GOOD, LanguageConfig())[:2] == (None, "en")
    assert language.check(french, LanguageConfig())[:2] == ("language.not_kept", "fr")
    assert language.check(german, LanguageConfig())[:2] == ("language.not_kept", "de")
    assert language.check(french, LanguageConfig(languages=["en", "fr"]))[0] is None
    assert language.check(GOOD, LanguageConfig(min_score=1.01 - 1e-9))[0] == "language.not_kept"


def test_harmful_word_list_whole_words_and_phrases(tmp_path):
    words = WordList(["ass", "two girls one cup"], min_matches=1)
    assert words.check("The class met in the grass.") is None  # inside longer words
    assert words.check("What an ass.") == "harmful.word_list"
    assert words.check("search for Two  Girls\nOne Cup now") == "harmful.word_list"
    assert WordList(["ass"], min_matches=2).check("What an ass.") is None
    assert "anus" in load_terms(HarmfulConfig()) and len(load_terms(HarmfulConfig())) > 350
    extra = tmp_path / "extra.txt"
    extra.write_text("Zorblax\n")
    assert WordList.from_config(HarmfulConfig(lists=[], extra_list=str(extra))).check("a zorblax here") is not None
    with pytest.raises(LlmkitError, match="no list named 'xx'"):
        load_terms(HarmfulConfig(lists=["xx"]))


def test_harmful_narrowing_finds_every_match_the_whole_alternation_finds():
    """Running the alternation over the terms whose words all occur in the text only skips what cannot match:
    every shipped term (an emoji and a punctuation-only term included) in many contexts gives the matches of
    one alternation of all terms, longest first, between word boundaries."""
    import random
    import re

    terms = [*load_terms(HarmfulConfig()), "@!#", "x y"]
    ordered = sorted(terms, key=len, reverse=True)
    reference = re.compile(
        r"(?<!\w)(?:" + "|".join(r"\s+".join(map(re.escape, t.split())) for t in ordered) + r")(?!\w)"
    )
    words = WordList(terms)
    rng = random.Random(0)
    contexts = ["{t}", "x {t} y", "a{t}", "{t}b", "({t}).", "word-{t}", "{t}'s", "1{t}2", "Say {T}!", "{t}\n{t}"]
    fillers = ["the", "class", "grass", "2", "cup", "girls", "x", "y", "-", "!", "@!", "#"]
    narrowed = 0
    for term in terms:
        for context in contexts:
            text = " ".join(rng.sample(fillers, 4)) + " " + context.format(t=term, T=term.upper())
            assert words.matches(text) == [m.group() for m in reference.finditer(text.lower())], (term, text)
            narrowed += words._pattern_for(text.lower()) is not words.pattern
    assert narrowed > len(terms)  # the narrowing ran, not the whole alternation every time
    assert words._pattern_for("a plain sentence about the weather.") is None


# --- PII ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("write to jane.doe+news@mail.example.co.uk today", "write to <EMAIL> today"),
        ("server 192.168.0.1.", "server <IP>."),
        ("ip fe80::1ff:fe23:4567:890a and 2001:db8::1", "ip <IP> and <IP>"),
        ("call +1 (555) 010-9999 now", "call <PHONE> now"),
        ("call (555) 010-9999", "call <PHONE>"),
        ("or +44 20 7946 0958.", "or <PHONE>."),
        ("or 555-010-9999 or 555.010.9999 or 555-0199", "or <PHONE> or <PHONE> or <PHONE>"),
    ],
)
def test_pii_redacted(text, redacted):
    assert redact(text, PiiConfig()).text == redacted


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3.4.5 and 999.1.1.1",
        "on 2019-01-30 at 10:30 and 12:45:00",
        "rates of 10 15 20 25 percent, 1,000,000 dollars",
        "see section 3.2.1 of the year 2019 report",
        "email me at the office",
    ],
)
def test_pii_leaves_numbers_alone(text):
    assert redact(text, PiiConfig()).text == text


def test_pii_switches_and_counts():
    text = "a@b.org 10.0.0.1 555-010-9999"
    out = redact(text, PiiConfig(ip=False, phone_replacement="[P]"))
    assert out.text == "<EMAIL> 10.0.0.1 [P]" and out.counts == {"email": 1, "phone": 1}


# --- normalization and config ------------------------------------------------------------------------


def test_normalize():
    assert normalize("  Cafe\u0301 \t au\u00a0lait  \r\n\r\n\r\n\nnext  line ") == "Café au lait\n\nnext line"


def test_config_toml_round_trip_and_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(to_toml(CurateConfig()))
    assert CurateConfig.from_toml(path) == CurateConfig()
    path.write_text("[near_dedup]\nthreshold = 0.7\nngram = 5\n[c4]\nenabled = false\n")
    cfg = CurateConfig.from_toml(path)
    assert (cfg.near_dedup.threshold, cfg.near_dedup.ngram, cfg.c4.enabled) == (0.7, 5, False)
    assert "c4" not in cfg.enabled_rules()
    for text, match in [
        ("[gopher]\n", "unknown table \\[gopher\\].*gopher_quality"),
        ("[c4]\nlorem = true\n", "unknown key 'lorem'.*lorem_ipsum"),
        ("[c4]\nmin_sentences = 'five'\n", "min_sentences must be int"),
        ("[near_dedup]\nthreshold = 1.5\n", "threshold must be in"),
        ("[language]\nlanguages = []\n", "languages is empty"),
        ("[gopher_quality]\nmin_words = -1\n", "must not be negative"),
    ]:
        path.write_text(text)
        with pytest.raises(LlmkitError, match=match):
            CurateConfig.from_toml(path)
    assert dataclasses.asdict(CurateConfig())["near_dedup"]["threshold"] == 0.8
