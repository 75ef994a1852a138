"""Exact and near dedup on synthetic corpora with planted duplicates, against ground truth and brute force."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from llmkit.curate import dedup
from llmkit.curate.text import shingle_words


def _vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(size)]


def _document(rng: random.Random, vocab: list[str], weights: list[float]) -> str:
    words = rng.choices(vocab, weights=weights, k=rng.randint(80, 220))
    return " ".join(words) + "."


def _edit(rng: random.Random, text: str, vocab: list[str], weights: list[float]) -> str:
    """Edit 5-10% of the words: each edit a substitution, an insertion or a deletion, at random."""
    words = text.rstrip(".").split()
    n = max(1, round(rng.uniform(0.05, 0.10) * len(words)))
    for i in sorted(rng.sample(range(len(words)), n), reverse=True):
        op = rng.choice("sid")
        if op == "s":
            words[i] = rng.choices(vocab, weights=weights)[0]
        elif op == "i":
            words.insert(i, rng.choices(vocab, weights=weights)[0])
        else:
            del words[i]
    return " ".join(words) + "."


def planted_corpus(seed: int, n_base: int, n_planted: int) -> tuple[list[str], list[int]]:
    """``n_base`` independent documents plus 1-2 edited copies of ``n_planted`` of them, shuffled;
    returns the texts and each text's true cluster (the index of its base document's cluster)."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    weights = [1 / (rank + 1) for rank in range(len(vocab))]  # Zipf: common words shared by every document
    bases = [_document(rng, vocab, weights) for _ in range(n_base)]
    docs = [(text, b) for b, text in enumerate(bases)]
    for b in rng.sample(range(n_base), n_planted):
        docs += [(_edit(rng, bases[b], vocab, weights), b) for _ in range(rng.randint(1, 2))]
    rng.shuffle(docs)
    return [t for t, _ in docs], [c for _, c in docs]


def _removed(roots: list[int]) -> set[int]:
    return {i for i, r in enumerate(roots) if r != i}


def _true_removed(clusters: list[int]) -> set[int]:
    first: dict[int, int] = {}
    return {i for i, c in enumerate(clusters) if first.setdefault(c, i) != i}


def test_near_dedup_recall_and_precision_on_planted_duplicates():
    texts, clusters = planted_corpus(seed=0, n_base=600, n_planted=200)
    roots = dedup.near_duplicate_roots(texts, threshold=0.8, ngram=1, num_perm=128, seed=1)
    found, truth = _removed(roots), _true_removed(clusters)
    recall = len(found & truth) / len(truth)
    precision = len(found & truth) / len(found)
    assert len(truth) > 250
    assert recall >= 0.95, recall
    assert precision >= 0.95, precision
    # and each kept document is the first of its true cluster
    assert all(clusters[roots[i]] == clusters[i] for i in found & truth)


def _brute_force_roots(texts: list[str], threshold: float, ngram: int) -> list[int]:
    """Exact Jaccard of the shingle sets (strings, no hashing) over every pair, then connected components."""
    sets = []
    for text in texts:
        words = shingle_words(text)
        sets.append({" ".join(words[i : i + ngram]) for i in range(max(1, len(words) - ngram + 1))})
    pairs = [
        (i, j)
        for i, j in itertools.combinations(range(len(texts)), 2)
        if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold
    ]
    return dedup.cluster_roots(len(texts), pairs)


@pytest.mark.parametrize(("ngram", "threshold"), [(1, 0.8), (2, 0.6), (3, 0.5)])
def test_near_dedup_clusters_equal_brute_force_jaccard(ngram, threshold):
    texts, _ = planted_corpus(seed=1, n_base=70, n_planted=30)
    expected = _brute_force_roots(texts, threshold, ngram)
    assert len(_removed(expected)) > 15  # the brute force finds duplicates to agree on
    assert dedup.near_duplicate_roots(texts, threshold, ngram, num_perm=128, seed=1) == expected


def test_minhash_estimates_jaccard():
    a = np.arange(0, 1000, dtype=np.uint32)
    b = np.arange(200, 1200, dtype=np.uint32)  # Jaccard 800 / 1200
    sigs = dedup.signatures([a, b], num_perm=256, seed=1)
    assert dedup.jaccard(a, b) == pytest.approx(2 / 3)
    assert np.mean(sigs[0] == sigs[1]) == pytest.approx(2 / 3, abs=0.08)


def test_exact_dedup_ignores_case_punctuation_and_whitespace():
    texts = ["Hello, World!  How are you?", "hello world how are you", "Hello World. How are you??", "Hello there."]
    roots = dedup.exact_roots([dedup.exact_digest(t) for t in texts])
    assert roots == [0, 0, 0, 3]


def test_cluster_roots_are_first_members_and_transitive():
    assert dedup.cluster_roots(5, [(3, 4), (1, 3), (0, 2)]) == [0, 1, 0, 1, 1]


def test_shingles():
    assert len(dedup.shingle_hashes("The cat, the CAT; the cat.", 1)) == 2
    assert len(dedup.shingle_hashes("a b c d", 3)) == 2
    assert len(dedup.shingle_hashes("a b", 3)) == 1  # shorter than n: one shingle
    assert len(dedup.shingle_hashes("!!!", 1)) == 0
