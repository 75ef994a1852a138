"""Which pieces a tokenizer cuts a text into: each token's id and the bytes of the input it covers.

Spans are byte offsets into ``text.encode("utf-8")``, so a character that one byte-level token
cannot hold (``é`` is two bytes, an emoji four) is shared out byte by byte, and the spans of all
tokens put back together give the input exactly. How they are found depends on the tokenizer:

- byte-level BPE (GPT-2, Llama 3): from each token's own bytes (its string spells them in GPT-2's
  byte alphabet), laid end to end. The encoding's character offsets cannot say which half of
  ``é`` each of its two tokens holds; the bytes can.
- WordPiece and Unigram: from the encoding's character offsets, converted to byte offsets. A
  normalizer may change the text (BERT lowercases and strips accents), so the spans cover the
  original characters each token came from, and only whitespace lies between them.

Tokens the post-processor adds (``[CLS]``, ``[SEP]``, ``</s>``) cover no input: an empty span at
the place they stand.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

import tokenizers

from llmkit.data.tokenizer import Tokenizer
from llmkit.viz.style import OKABE_ITO, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# A word for the counts: letters and digits, with inner apostrophes ("don't" is one word).
_WORD = re.compile(r"\w+(?:['’]\w+)*")
# Visible stand-ins for whitespace in labels, so " the" and "the" look different.
_VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})


@dataclass
class TokenSpan:
    """One token of an encoded text; ``start:end`` are byte offsets into the UTF-8 input."""

    index: int
    id: int
    piece: str  # the vocabulary string: "Ġcat", "##ing", "▁the", "[CLS]"
    label: str  # readable text: spaces as ␣, newlines as ↵, part of a character as <0xC3>
    text: str  # the input it covers ("" for special tokens); part of a character as <0xC3>
    start: int
    end: int
    special: bool  # added by the post-processor ([CLS], </s>): covers no input, start == end


@dataclass
class TokenStats:
    """Counts that show how densely a tokenizer packs a text (and so how much context it uses)."""

    tokens: int  # every id the model sees, special tokens included
    special: int
    words: int  # runs of letters and digits, as _WORD finds them
    characters: int
    bytes: int
    split_words: list[tuple[str, list[str]]]  # words cut into several tokens, with their pieces' labels

    @property
    def tokens_per_word(self) -> float:
        """Tokens of the text itself (special tokens left out) per word."""
        return (self.tokens - self.special) / self.words if self.words else 0.0


def token_spans(tokenizer: Tokenizer, text: str, add_special_tokens: bool = True) -> list[TokenSpan]:
    """Encode ``text`` and give every token its byte span (see the module docstring for how)."""
    encoding = tokenizer.backend.encode(text, add_special_tokens=add_special_tokens)
    if tokenizer.is_byte_level:
        bounds = _byte_level_bounds(tokenizer, encoding, text)
        if bounds is not None:
            return _spans(tokenizer, encoding, text, bounds, from_bytes=True)
    return _spans(tokenizer, encoding, text, _offset_bounds(encoding, text), from_bytes=False)


def token_stats(text: str, spans: list[TokenSpan]) -> TokenStats:
    """Counts of tokens, words, characters and bytes, and the words split into sub-word pieces."""
    byte_at = _byte_offsets(text)
    split = []
    words = list(_WORD.finditer(text))
    for word in words:
        start, end = byte_at[word.start()], byte_at[word.end()]
        pieces = [s.label for s in spans if s.start < end and s.end > start]
        if len(pieces) > 1:
            split.append((word.group(), pieces))
    n_special = sum(s.special for s in spans)
    return TokenStats(len(spans), n_special, len(words), len(text), len(text.encode("utf-8")), split)


def visible(text: str) -> str:
    """``text`` with spaces, newlines and tabs drawn as ␣ ↵ ⇥, so " the" and "the" look different."""
    return text.translate(_VISIBLE)


def token_labels(spans: list[TokenSpan]) -> list[str]:
    """Tick labels for pictures: each token's readable label."""
    return [s.label for s in spans]


# ---- drawing --------------------------------------------------------------------------------------

# Fills cycled over neighbouring tokens so each boundary shows; light tints keep the text readable.
_FILLS = [OKABE_ITO[name] for name in ("sky_blue", "orange", "green", "yellow", "purple")]


def draw_tokens(spans: list[TokenSpan], title: str, subtitle: str, width: int = 64) -> Figure:
    """The text as a row of boxes, one per token, its label on top and its id below, wrapped at
    ``width`` characters. Special tokens get a dashed grey box: they are not in the input."""
    from matplotlib.patches import Rectangle

    rows, row, x = [], [], 0
    for s in spans:
        cells = max(len(s.label), len(str(s.id))) + 1
        if row and x + cells > width:
            rows.append(row)
            row, x = [], 0
        row.append((x, cells, s))
        x += cells
    rows.append(row)
    # one character cell of 10 pt monospace is about 0.085 inch wide; 9 pt text about 0.07 inch a character
    fig_width = width * 0.085 + 0.5
    subtitle = textwrap.fill(subtitle, int(fig_width / 0.07))
    head = 0.55 + 0.18 * (subtitle.count("\n") + 1)  # inches above the boxes: title and subtitle lines
    fig = new_figure(fig_width, 0.55 * len(rows) + head + 0.2)
    ax = fig.add_axes((0.02, 0.03, 0.96, 1 - (head + 0.05) / fig.get_figheight()))
    ax.set_xlim(0, width)
    ax.set_ylim(len(rows) * 2.2, 0)
    ax.set_axis_off()
    for r, cells_row in enumerate(rows):
        for x, cells, s in cells_row:
            y = r * 2.2
            fill = "#eeeeee" if s.special else _FILLS[s.index % len(_FILLS)]
            box = Rectangle((x + 0.08, y + 0.08), cells - 0.16, 1.9, facecolor=fill, alpha=1.0 if s.special else 0.45)
            box.set(edgecolor="#666666", linestyle="--" if s.special else "-", linewidth=0.6)
            ax.add_patch(box)
            ax.text(x + cells / 2, y + 0.7, s.label, ha="center", va="center", family="monospace", fontsize=10)
            ax.text(x + cells / 2, y + 1.55, str(s.id), ha="center", va="center", fontsize=7, color="#333333")
    fig.text(0.5, 1 - 0.08 / fig.get_figheight(), title, ha="center", va="top", fontsize=11)
    fig.text(0.5, 1 - 0.4 / fig.get_figheight(), subtitle, ha="center", va="top", fontsize=9, color="#333333")
    return fig


# ---- internals ------------------------------------------------------------------------------------


def _byte_offsets(text: str) -> list[int]:
    """Byte offset of every character index of ``text``, and of its end: len(text) + 1 entries."""
    offsets = [0]
    for ch in text:
        offsets.append(offsets[-1] + len(ch.encode("utf-8")))
    return offsets


def _byte_level_bounds(tokenizer: Tokenizer, encoding: tokenizers.Encoding, text: str) -> list[tuple[int, int]] | None:
    """Byte spans laid end to end from each token's own bytes; None when they do not spell ``text``."""
    data = text.encode("utf-8")
    byte_at = _byte_offsets(text)
    added = set(tokenizer.backend.get_added_tokens_decoder())
    bounds, pos = [], 0
    for token_id, special, (s, e) in zip(encoding.ids, encoding.special_tokens_mask, encoding.offsets, strict=True):
        if special:
            bounds.append((pos, pos))
            continue
        if token_id in added:  # matched in the input as it stands: its character offsets are exact
            raw = data[byte_at[s] : byte_at[e]]
        else:
            raw = tokenizer.token_bytes(token_id)
            if raw is None:
                return None
            if raw[:1] == b" " and data[pos : pos + 1] != b" ":
                raw = raw[1:]  # ByteLevel(add_prefix_space=True) put a space in front that the input lacks
        if data[pos : pos + len(raw)] != raw:
            return None  # a normalizer changed the bytes: fall back to character offsets
        bounds.append((pos, pos + len(raw)))
        pos += len(raw)
    return bounds if pos == len(data) else None


def _offset_bounds(encoding: tokenizers.Encoding, text: str) -> list[tuple[int, int]]:
    """Byte spans from the encoding's character offsets, made ordered and non-overlapping."""
    byte_at = _byte_offsets(text)
    bounds, pos = [], 0
    for token, special, (s, e) in zip(encoding.tokens, encoding.special_tokens_mask, encoding.offsets, strict=True):
        start, end = byte_at[s], byte_at[e]
        if special:
            start = end = pos
        elif token.strip("▁") == "" and not text[s:e].isspace():
            # Metaspace's prepended "▁" reports the offsets of the character after it, which it is not
            start = end = max(pos, start)
        start = max(start, pos)  # two tokens from one character (byte fallback): the first takes it
        end = max(end, start)
        bounds.append((start, end))
        pos = end
    return bounds


def _spans(
    tokenizer: Tokenizer, encoding: tokenizers.Encoding, text: str, bounds: list[tuple[int, int]], from_bytes: bool
) -> list[TokenSpan]:
    data = text.encode("utf-8")
    spans = []
    for i, (token_id, special) in enumerate(zip(encoding.ids, encoding.special_tokens_mask, strict=True)):
        start, end = bounds[i]
        covered = _decode(data[start:end])
        # the vocabulary's string: Unigram's encoding shows an unknown character itself, not <unk>
        piece = tokenizer.id_to_token(token_id) or encoding.tokens[i]
        # byte-level tokens show the text they cover (GPT-2's "Ġ" for a space reads badly); others their piece
        label = visible(covered) if from_bytes and not special else piece
        spans.append(TokenSpan(i, token_id, piece, label, covered, start, end, bool(special)))
    return spans


def _decode(covered: bytes) -> str:
    """The covered bytes as text, or as hex when they are part of a multi-byte character."""
    try:
        return covered.decode("utf-8")
    except UnicodeDecodeError:
        return "<" + " ".join(f"0x{b:02X}" for b in covered) + ">"
