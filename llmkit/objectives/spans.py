"""T5's span corruption (Raffel et al. 2020, sec. 3.1.4): random spans become sentinels in the
encoder input; the decoder writes each sentinel followed by the span it stands for."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from llmkit.errors import LlmkitError
from llmkit.objectives.batch import IGNORE_INDEX, Batch, Rows, as_rows


# ---- span corruption (T5) -------------------------------------------------------------------
def random_spans_noise_mask(
    length: int, noise_density: float, mean_span_length: float, generator: torch.Generator
) -> torch.Tensor:
    """T5's ``random_spans_noise_mask`` (t5/data/preprocessors.py): a bool mask (length,), True = noise.

    Order: count the noise tokens and spans (``noise_counts``) -> split the noise tokens into that many
    non-empty spans at random (one ``torch.randperm`` draw) -> split the non-noise tokens likewise (a
    second draw) -> interleave non-noise, noise, non-noise, noise, ...: the mask starts with non-noise
    and ends with noise. A row shorter than 2 tokens gets no noise (T5's result too) and draws nothing.
    """
    num_noise, num_spans = noise_counts(length, noise_density, mean_span_length)
    if num_spans == 0:
        return torch.zeros(length, dtype=torch.bool)
    noise_lengths = _random_segmentation(num_noise, num_spans, generator)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, generator)
    span_lengths = torch.stack([nonnoise_lengths, noise_lengths], dim=1).flatten()  # (2 * spans,)
    # as T5: mark where each span starts, number the spans by a running sum; odd spans are noise
    span_start = torch.zeros(length, dtype=torch.long)
    span_start[span_lengths.cumsum(0)[:-1]] = 1
    return span_start.cumsum(0) % 2 == 1


def span_corruption_from_mask(
    tokens: Rows,
    noise_mask: Rows,
    *,
    sentinel_ids: Sequence[int],
    eos_id: int,
    pad_id: int,
    decoder_start_id: int,
) -> Batch:
    """Turn rows and their noise masks into a T5 batch (T5's ``noise_span_to_unique_sentinel``).

    Per row, in order: the input is the non-noise tokens with each noise span replaced by one sentinel
    (``sentinel_ids[0]`` = <extra_id_0> for the first span, then the next), then ``eos_id``; the labels
    are each span's sentinel followed by the span's tokens, then ``eos_id``; ``decoder_input_ids`` are
    the labels shifted right behind ``decoder_start_id``. Then every row is padded to the longest:
    ``pad_id`` in the ids, 0 in the attention masks, -100 in the labels.

    Paper, Figure 2: "Thank you <X> me to your party <Y> week." -> "<X> for inviting <Y> last <Z>".
    T5's code adds that final <Z> only when a row ends in non-noise, which its masks never do; the
    labels here always end with the last span, then eos, whatever the mask.
    """
    row_inputs, row_labels = [], []
    for row, noise in zip(as_rows(tokens), as_rows(noise_mask), strict=True):
        inputs, labels = _corrupt_row(row, noise.bool(), sentinel_ids)
        row_inputs.append(torch.cat([inputs, inputs.new_tensor([eos_id])]))
        row_labels.append(torch.cat([labels, labels.new_tensor([eos_id])]))
    decoder_inputs = [torch.cat([labels.new_tensor([decoder_start_id]), labels[:-1]]) for labels in row_labels]
    return Batch(
        {
            "input_ids": pad_sequence(row_inputs, batch_first=True, padding_value=pad_id),
            "attention_mask": _length_mask(row_inputs),
            "decoder_input_ids": pad_sequence(decoder_inputs, batch_first=True, padding_value=pad_id),
            "decoder_attention_mask": _length_mask(decoder_inputs),
        },
        pad_sequence(row_labels, batch_first=True, padding_value=IGNORE_INDEX),
    )


def span_corruption(
    tokens: Rows,
    *,
    sentinel_ids: Sequence[int],
    eos_id: int,
    pad_id: int,
    decoder_start_id: int,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    generator: torch.Generator,
) -> Batch:
    """T5's span corruption (Raffel et al. 2020, sec. 3.1.4; 15% noise, mean span 3 as in sec. 3.3.4).

    Order: for each row in turn, draw its noise mask with ``random_spans_noise_mask`` (two draws from
    ``generator`` per row of 2 or more tokens); then ``span_corruption_from_mask`` builds the inputs,
    labels and decoder inputs and pads the rows to a common length. ``tokens`` is (B, L) or a list of
    1-D rows of any lengths. Rows of equal length give equal lengths after corruption, so a (B, L)
    window of ``span_corruption_lengths`` tokens needs no padding. The batch is built on the CPU (rows
    are corrupted one by one); move it with ``Batch.to``.
    """
    rows = as_rows(tokens)
    masks = [random_spans_noise_mask(len(row), noise_density, mean_span_length, generator) for row in rows]
    return span_corruption_from_mask(
        rows, masks, sentinel_ids=sentinel_ids, eos_id=eos_id, pad_id=pad_id, decoder_start_id=decoder_start_id
    )


def span_corruption_lengths(inputs_length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """T5's ``random_spans_helper``: (raw tokens to draw, target length) for corrupted inputs of
    ``inputs_length`` tokens, eos included.

    Order: start at ``inputs_length - 1`` raw tokens and grow while the corrupted input (non-noise tokens
    + one sentinel per span + eos) still fits -> the target length is the noise tokens + one sentinel per
    span + eos -> at noise_density 0.5, T5's tweak: one raw token fewer when the targets would be longer
    than the inputs. T5 (preprocessors.py, the docstring of random_spans_helper): inputs_length=512,
    noise_density=0.15, mean_noise_span_length=3 give tokens_length=568 and targets_length=114.
    The counts are those of ``random_spans_noise_mask``, so a drawn window corrupts to exactly this size.
    """
    if inputs_length < 2:
        raise LlmkitError(
            f"span corruption needs an input length of at least 2 (one token and eos), got {inputs_length}",
            "raise --train.block_size",
        )

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise, num_spans = noise_counts(tokens_length, noise_density, mean_span_length)
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a row, with T5's guards against degenerate rows."""
    if length < 2:
        return 0, 0
    # T5: at least one noise and one non-noise token, at least one span; Python's round, like tf.round,
    # rounds halves to even
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span_length), 1)
    # ours: each noise span follows a non-empty non-noise span (T5 assumes noise_density < 0.5)
    return num_noise, min(num_spans, length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, generator: torch.Generator) -> torch.Tensor:
    """Lengths (num_segments,) of a uniformly random split of num_items into non-empty segments.

    T5's ``_random_segmentation`` shuffles num_segments - 1 segment starts among the num_items - 1
    places after the first item; taking the first num_segments - 1 of a random permutation is the same.
    """
    perm = torch.randperm(num_items - 1, generator=generator, device=generator.device).cpu()
    starts = perm[: num_segments - 1].sort().values + 1
    bounds = torch.cat([torch.tensor([0]), starts, torch.tensor([num_items])])
    return bounds.diff()


def _corrupt_row(
    tokens: torch.Tensor, noise: torch.Tensor, sentinel_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, label ids) of one row without eos: sentinels stand in for the noise spans."""
    if noise.shape != tokens.shape:
        raise LlmkitError(f"a noise mask of shape {tuple(noise.shape)} for a row of shape {tuple(tokens.shape)}")
    follows_noise = torch.cat([noise.new_zeros(1), noise[:-1]])
    span_start = noise & ~follows_noise  # (L,) first token of each noise span
    n_spans = int(span_start.sum())
    if n_spans > len(sentinel_ids):
        raise LlmkitError(
            f"a row has {n_spans} noise spans but the tokenizer has only {len(sentinel_ids)} sentinel tokens",
            "lower --train.block_size or --train.noise_density, or train a tokenizer with more sentinels",
        )
    span_index = (span_start.cumsum(0) - 1).clamp(min=0)  # which span a noise token belongs to
    sentinel = tokens.new_tensor(list(sentinel_ids[:n_spans]) or [0])[span_index]  # (L,)
    # input: a span's first token becomes its sentinel, the rest of the span is dropped
    inputs = torch.where(span_start, sentinel, tokens)[~noise | span_start]
    # labels: read (sentinel, token) pairs row-major, keeping the sentinel only at a span's start
    pairs = torch.stack([sentinel, tokens], dim=1)  # (L, 2)
    keep = torch.stack([span_start, noise], dim=1)
    return inputs, pairs[keep]


def _length_mask(rows: list[torch.Tensor]) -> torch.Tensor:
    """(B, max length) with 1 over each row's tokens and 0 over its padding."""
    lengths = torch.tensor([len(row) for row in rows])
    return (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long()
