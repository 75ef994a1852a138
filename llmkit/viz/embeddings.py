"""Which words sit close together in a model's vector space: cosine similarity, angle, a 2-D map.

A word's vector is the mean of its sub-word pieces' vectors: rows of the input embedding matrix
(``input_vectors``), or the model's last hidden states for the word inside a sentence
(``contextual_vectors``). Cosine similarity is the cosine of the angle between two vectors,
``a.b / (|a| |b|)``; the 2-D picture projects the centred vectors on their first two principal
components (PCA via ``torch.linalg.svd``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.viz.style import HEATMAP, OKABE_ITO, new_figure, shorten, text_colour
from llmkit.viz.tokens import TokenSpan, token_spans

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class WordVectors:
    """One vector per word, and the pieces each was averaged from."""

    words: list[str]
    pieces: list[list[str]]  # labels of the tokens whose vectors were averaged, per word
    vectors: torch.Tensor  # (W, C)
    source: str  # what the vectors are, for titles and tables


@dataclass
class Projection:
    """Coordinates on the first two principal components and the share of variance each explains."""

    coords: torch.Tensor  # (W, 2)
    explained: tuple[float, float]


def word_pieces(tokenizer: Tokenizer, word: str, as_is: bool = False) -> list[TokenSpan]:
    """The tokens of ``word`` as it appears inside running text.

    Byte-level BPE has separate tokens for "cat" and " cat"; inside a sentence a word follows a
    space, so the word is encoded with one in front (``as_is`` encodes it bare). Tokens that cover
    only that added space are left out. WordPiece and Unigram mark word starts themselves.
    """
    prefix = " " if tokenizer.is_byte_level and not as_is else ""
    spans = token_spans(tokenizer, prefix + word, add_special_tokens=False)
    return [s for s in spans if s.end > len(prefix)]


def input_vectors(
    model: nn.Module, tokenizer: Tokenizer, words: list[str], as_is: bool = False, single_token: bool = False
) -> WordVectors:
    """Each word's input embedding: the mean of its pieces' rows of the token embedding matrix.

    A word the vocabulary lacks (it encodes with the unknown token) is an error; so is a word of
    several pieces when ``single_token`` asks for words that are one token each.
    """
    device = next(model.parameters()).device
    pieces, vectors = [], []
    for word in words:
        spans = word_pieces(tokenizer, word, as_is)
        _check_pieces(tokenizer, word, spans, single_token)
        ids = torch.tensor([s.id for s in spans], device=device)
        with torch.no_grad():  # the embedding module, not its weight: a quantized one dequantizes its rows
            rows = model.embed.tokens(ids).float()  # (pieces, C)
        vectors.append(rows.mean(0))  # (C,)
        pieces.append([s.label for s in spans])
    return WordVectors(list(words), pieces, torch.stack(vectors).cpu(), "input embeddings")


@torch.no_grad()
def contextual_vectors(model: nn.Module, tokenizer: Tokenizer, sentence: str, words: list[str]) -> WordVectors:
    """Each word's vector in context: the mean of the last hidden states of the tokens that cover it.

    The model reads ``sentence`` once (special tokens as it was trained with them); each word is
    found as a whole word in it (its first occurrence). A decoder sees only the words to its left,
    an encoder (or T5's encoder) the whole sentence.
    """
    spans = token_spans(tokenizer, sentence)
    ids = torch.tensor([[s.id for s in spans]], device=next(model.parameters()).device)  # (1, T)
    if model.config.family == "encoder_decoder":
        hidden, _ = model.encode(ids)  # (1, T, C): the encoder's states are the sentence's context
    else:
        hidden = model(ids).last_hidden_state  # (1, T, C)
    pieces, vectors = [], []
    for word in words:
        start, end = _find_word(sentence, word)
        covering = [s for s in spans if s.start < end and s.end > start]
        vectors.append(hidden[0, [s.index for s in covering]].float().mean(0))  # (C,)
        pieces.append([s.label for s in covering])
    return WordVectors(list(words), pieces, torch.stack(vectors).cpu(), "contextual vectors (last hidden state)")


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """vectors (W, C) -> cosine similarity (W, W): dot products of the unit-length vectors."""
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)  # (W, C)
    return (unit @ unit.T).clamp(-1.0, 1.0)


def angles_degrees(cosine: torch.Tensor) -> torch.Tensor:
    """The angle between each pair of vectors, in degrees, from their cosine similarity."""
    return torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))


def pca_2d(vectors: torch.Tensor) -> Projection:
    """Project vectors (W, C) onto their first two principal components.

    Centre the vectors, take the SVD ``X = U S Vh``; the rows of ``Vh`` are the principal directions
    and ``S**2`` the variance along each. Each direction's sign is fixed so its largest coordinate
    is positive: the SVD may flip a direction, and the picture should not flip with it.
    """
    x = vectors.float() - vectors.float().mean(0)  # (W, C)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # s (K,), vh (K, C), K = min(W, C)
    coords = x @ vh[:2].T  # (W, min(K, 2))
    if coords.shape[1] < 2:  # one word or one dimension: nothing spreads along a second axis
        coords = torch.cat([coords, torch.zeros(coords.shape[0], 2 - coords.shape[1])], dim=1)
    biggest = coords.abs().argmax(0)  # (2,)
    coords = coords * torch.where(coords[biggest, torch.arange(2)] < 0, -1.0, 1.0)
    variance = s**2
    share = (variance / variance.sum()).tolist() if float(variance.sum()) > 0 else [0.0]
    share = [*share, 0.0, 0.0][:2]
    return Projection(coords, (share[0], share[1]))


def similarity_table(vectors: WordVectors) -> str:
    """Text table: cosine similarity and angle for every pair of words, closest pairs first."""
    cos = cosine_matrix(vectors.vectors)
    angle = angles_degrees(cos)
    width = max(len(w) for w in vectors.words) + 2
    n = len(vectors.words)
    pairs = sorted(((i, j) for i in range(n) for j in range(i + 1, n)), key=lambda ij: -float(cos[ij]))
    lines = [f"{'word':<{width}}{'word':<{width}}{'cosine':>8}{'angle':>9}"]
    for i, j in pairs:
        lines.append(
            f"{vectors.words[i]:<{width}}{vectors.words[j]:<{width}}{float(cos[i, j]):>8.3f}{float(angle[i, j]):>8.1f}°"
        )
    return "\n".join(lines)


# ---- drawing --------------------------------------------------------------------------------------


def draw_embeddings(vectors: WordVectors, title: str) -> Figure:
    """Two panels: the words on their first two principal components, and their cosine similarities."""
    projection = pca_2d(vectors.vectors)
    cos = cosine_matrix(vectors.vectors)
    n = len(vectors.words)
    side = min(max(0.3 * n + 2.5, 4.0), 7.0)  # inches per panel: room for the words, not more
    fig = new_figure(2 * side + 1.0, side + 0.8)
    scatter, heat = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.1]})
    _draw_projection(scatter, vectors.words, projection)
    _draw_cosine(fig, heat, vectors.words, cos)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _draw_projection(ax, words: list[str], projection: Projection) -> None:
    xy = projection.coords.numpy()
    ax.scatter(xy[:, 0], xy[:, 1], s=36, color=OKABE_ITO["blue"], zorder=3)
    for (x, y), word in zip(xy, words, strict=True):
        ax.annotate(shorten(word, 18), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=9)
    ax.axhline(0, color="#bbbbbb", linewidth=0.6, zorder=1)
    ax.axvline(0, color="#bbbbbb", linewidth=0.6, zorder=1)
    ax.margins(0.2)
    ax.set_xlabel(f"principal component 1 ({projection.explained[0]:.0%} of variance)")
    ax.set_ylabel(f"principal component 2 ({projection.explained[1]:.0%} of variance)")
    ax.set_title("2-D PCA of the vectors", fontsize=10)


def _draw_cosine(fig: Figure, ax, words: list[str], cos: torch.Tensor) -> None:
    n = len(words)
    image = ax.imshow(cos.numpy(), cmap=HEATMAP, vmin=-1.0, vmax=1.0)
    labels = [shorten(w, 14) for w in words]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=9)
    ax.set_yticks(range(n), labels, fontsize=9)
    if n <= 12:  # numbers stay readable up to about a dozen words
        for i in range(n):
            for j in range(n):
                value = float(cos[i, j])
                colour = text_colour(image.cmap(image.norm(value)))
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_title("cosine similarity (angle = arccos)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")


# ---- internals ------------------------------------------------------------------------------------


def _check_pieces(tokenizer: Tokenizer, word: str, spans: list[TokenSpan], single_token: bool) -> None:
    if not word.strip() or not spans:
        raise LlmkitError(f"the word {word!r} has no tokens", "give words with letters in them")
    pieces = " ".join(s.label for s in spans)
    unk = tokenizer.unk_token_id
    if unk is not None and any(s.id == unk for s in spans):
        raise LlmkitError(
            f"the word {word!r} is not in the vocabulary: it encodes as {pieces} (with the unknown token)",
            "choose words the tokenizer knows; the unknown token's vector says nothing about the word",
        )
    if single_token and len(spans) > 1:
        raise LlmkitError(
            f"the word {word!r} is not one token in the vocabulary: it splits into {len(spans)} pieces ({pieces})",
            "drop --single-token to average its pieces, or choose another word",
        )


def _find_word(sentence: str, word: str) -> tuple[int, int]:
    """Byte span of the first whole-word occurrence of ``word`` in ``sentence``."""
    match = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", sentence)
    if match is None:
        raise LlmkitError(
            f"the word {word!r} does not occur in the --contextual sentence", "give words that appear in the sentence"
        )
    return len(sentence[: match.start()].encode("utf-8")), len(sentence[: match.end()].encode("utf-8"))
