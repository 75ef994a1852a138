"""Exact and near deduplication over the whole corpus (all shards together).

Exact: documents whose ``text.dedup_key`` (lowercased, punctuation and whitespace collapsed) has the
same BLAKE2b-128 digest; the first in corpus order is kept.

Near: the Jaccard similarity of two documents' shingle sets (word n-grams, ``near_dedup.ngram``
words each, hashed to 32 bits with CRC-32). MinHash signatures (datasketch) and locality-sensitive
hashing (datasketch's MinHashLSH, bands chosen to miss few pairs at the threshold) propose candidate
pairs; each candidate is then checked with the exact Jaccard of the two hash sets, so a pair is
joined only when J >= threshold: MinHash decides what is compared, never what is a duplicate. Joined
pairs form clusters (connected components, union-find); each cluster keeps its first document in
corpus order (shard order, then document order), so the result does not depend on worker count.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence

import numpy as np

from llmkit.curate.text import dedup_key, shingle_words

# MinHashLSH's band choice weighs false negatives this much more than false positives: candidates are
# verified exactly, so a false positive costs one set intersection, a false negative a missed duplicate.
_LSH_WEIGHTS = (0.05, 0.95)
# datasketch 2's permutation: CRC-32 pre-mixed by MurmurHash3's finalizer, then a * h + b mod 2**32 (a bijection,
# so the permutation adds no collisions); values are uint32
SCHEME = "affine32"


def exact_digest(text: str) -> bytes:
    """16-byte digest of the text exact dedup compares."""
    return hashlib.blake2b(dedup_key(text).encode(), digest_size=16).digest()


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Sorted unique CRC-32 hashes (uint32) of the document's word n-grams (one shingle if it is shorter)."""
    tokens = shingle_words(text)
    if not tokens:
        return np.zeros(0, dtype=np.uint32)
    if ngram == 1:
        grams = set(tokens)
    else:
        grams = {" ".join(tokens[i : i + ngram]) for i in range(max(1, len(tokens) - ngram + 1))}
    return np.unique(np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint32, count=len(grams)))


def _identity(value: int) -> int:
    return value


def signatures(hash_sets: Sequence[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures, (documents, num_perm) uint32, from datasketch's permutations of the shingle hashes."""
    from datasketch import MinHash

    out = np.empty((len(hash_sets), num_perm), dtype=np.uint32)
    # the seed's permutations drawn once, not once per document (drawing them was most of the time)
    permutations = MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity, scheme=SCHEME).permutations
    for i, hashes in enumerate(hash_sets):
        m = MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity, scheme=SCHEME, permutations=permutations)
        if len(hashes):
            m.update_batch(hashes.tolist())
        out[i] = m.hashvalues
    return out


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique hash arrays."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def candidate_pairs(sigs: np.ndarray, threshold: float, seed: int) -> list[tuple[int, int]]:
    """Pairs (i < j) that share at least one LSH band, by datasketch's MinHashLSH."""
    from datasketch import LeanMinHash, MinHashLSH

    num_perm = sigs.shape[1]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=_LSH_WEIGHTS)
    pairs = set()
    for i, row in enumerate(sigs):
        m = LeanMinHash(seed=seed, hashvalues=row, scheme=SCHEME)
        for j in lsh.query(m):
            pairs.add((j, i))
        lsh.insert(i, m, check_duplication=False)
    return sorted(pairs)


def near_duplicate_pairs(
    hash_sets: Sequence[np.ndarray], sigs: np.ndarray, threshold: float, seed: int
) -> list[tuple[int, int]]:
    """Candidate pairs whose exact Jaccard is at least ``threshold``; documents without shingles never pair."""
    found = []
    for i, j in candidate_pairs(sigs, threshold, seed):
        if len(hash_sets[i]) and len(hash_sets[j]) and jaccard(hash_sets[i], hash_sets[j]) >= threshold:
            found.append((i, j))
    return found


def near_duplicate_roots(texts: Sequence[str], threshold: float, ngram: int, num_perm: int, seed: int) -> list[int]:
    """Each text's near-duplicate cluster, named by its first member (the one dedup keeps): the whole
    near-dedup step on a list of texts."""
    hash_sets = [shingle_hashes(text, ngram) for text in texts]
    sigs = signatures(hash_sets, num_perm, seed)
    return cluster_roots(len(texts), near_duplicate_pairs(hash_sets, sigs, threshold, seed))


def cluster_roots(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Union-find over ``pairs``: each index's cluster, named by its smallest member."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the smaller index stays the root: the first document is kept
    return [find(i) for i in range(n)]


def exact_roots(digests: Sequence[bytes]) -> list[int]:
    """For each document, the index of the first document with the same digest."""
    first: dict[bytes, int] = {}
    return [first.setdefault(d, i) for i, d in enumerate(digests)]
