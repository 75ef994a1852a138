"""Training on the real tokens of a padded batch alone ("unpadding").

Norms, projections, MLPs, residuals and dropout work token by token, so a stack can run them on
the N real tokens (N, C) instead of all B x T positions. Only attention needs rows: it gathers each
row's tokens into groups of rows of similar length (sorted by length, ``group_sizes``), each
padded to its own longest row, runs scaled-dot-product attention per group and scatters the results
back to the token order. SST-2's sentences average 13 tokens but a random batch of 32 pads
to about 40: without this two thirds of every step is padding, and attention over the padded
length costs (40 / 13)^2 times more still.

Each row's real tokens must be contiguous (right or left padding, not holes): in its group they sit
at positions 0..L-1, so causality and T5's relative bias (functions of token order) are unchanged,
and rotary angles are taken per token from the position ids before the regrouping.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

# What one more attention group costs, in padded query-key pairs (rows x width^2 of a group): each
# group is a gather, an attention and a scatter per layer, forward and backward. Measured on a MiniLM
# SST-2 step (2-core CPU, fp32): four groups of 8 rows instead of one of 32 cost 4.3 ms on batches of
# rows of similar length (the groups' fixed costs alone) and saved 11.7 ms on random batches (their
# padding); those two figures put a group's fixed cost near 4,000 pairs.
GROUP_COST_PAIRS = 4096


def group_sizes(lengths: list[int], group_cost: float = GROUP_COST_PAIRS) -> list[int]:
    """How many rows each attention group takes, for rows sorted longest first: the split that
    minimises the padded attention work plus the groups' fixed cost, sum of (group_cost + rows x
    width^2) with width the group's first (longest) row. Rows of similar length share one group,
    rows of very different lengths go to separate ones. Exact dynamic programming over the runs of
    equal length (a run is never worth splitting): at most min(rows, longest) runs."""
    runs: list[tuple[int, int]] = []  # (length, rows), longest first
    for n in lengths:
        if runs and runs[-1][0] == n:
            runs[-1] = (n, runs[-1][1] + 1)
        else:
            runs.append((n, 1))
    starts = [0]
    for _, rows in runs:
        starts.append(starts[-1] + rows)
    k = len(runs)
    best, cut = [0.0] * (k + 1), [k] * (k + 1)  # best[i]: cheapest split of runs i.. ; cut[i]: its first group's end
    for i in range(k - 1, -1, -1):
        width2 = runs[i][0] ** 2
        best[i] = float("inf")
        for j in range(i + 1, k + 1):
            cost = group_cost + (starts[j] - starts[i]) * width2 + best[j]
            if cost < best[i]:
                best[i], cut[i] = cost, j
    sizes, i = [], 0
    while i < k:
        sizes.append(starts[cut[i]] - starts[i])
        i = cut[i]
    return sizes


@dataclass(frozen=True)
class Group:
    """Rows of similar length, laid out (rows, length) for attention."""

    gather: torch.Tensor  # (rows * length,) index into the N real tokens plus one zero row (N) for padding
    mask: torch.Tensor  # (rows, length) bool, True at real tokens
    padded: bool  # any padding in the group (else attention needs no padding mask)
    attn_mask: torch.Tensor | None = None  # additive (rows, 1, length, length): padding, causality, T5's bias

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a (B, T) batch are, and the attention groups over them."""

    index: torch.Tensor  # (N,) flat positions b * T + t of the real tokens, row by row
    batch: int
    length: int
    groups: tuple[Group, ...]
    back: torch.Tensor  # (N,) each real token's row in the groups' concatenated (rows * length) outputs
    causal: bool = False  # groups without an additive mask attend causally (SDPA's is_causal)

    @staticmethod
    def of(attention_mask: torch.Tensor, group_rows: int | None = None) -> Packing | None:
        """The packing of a (B, T) mask (1 = real token); None when nothing is padding or a row's real
        tokens are not contiguous (then the padded path runs). Attention groups: ``group_sizes``, or
        ``group_rows`` rows each when given."""
        mask = attention_mask.bool()
        B, T = mask.shape
        lengths = mask.sum(1)
        total = int(lengths.sum())  # one host sync per forward, as transformers' unpad_input
        if total == B * T or total == 0:
            return None
        starts, t = mask.int().argmax(1), torch.arange(T, device=mask.device)
        if not torch.equal((t >= starts[:, None]) & (t < (starts + lengths)[:, None]), mask):
            return None  # holes in a row
        index = mask.reshape(-1).nonzero().squeeze(1)  # (N,)
        first = torch.cumsum(lengths, 0) - lengths  # each row's first token among the N
        order = torch.argsort(lengths, descending=True, stable=True)
        order = order[lengths[order] > 0]  # empty rows have nothing to attend
        groups, back, offset = [], torch.empty(total, dtype=torch.long, device=mask.device), 0
        sorted_lengths = lengths[order].tolist()
        sizes = group_sizes(sorted_lengths) if group_rows is None else group_rows
        done = 0  # rows grouped so far
        for chunk in order.split(sizes):
            rows_len = lengths[chunk]
            width, done = sorted_lengths[done], done + len(chunk)  # the group's longest row is its first
            pos = torch.arange(width, device=mask.device)
            real = pos[None, :] < rows_len[:, None]  # (rows, width)
            gather = torch.where(real, first[chunk, None] + pos[None, :], total)  # padding -> the zero row
            flat_real = real.reshape(-1)
            back[gather.reshape(-1)[flat_real]] = offset + flat_real.nonzero().squeeze(1)
            groups.append(Group(gather.reshape(-1), real, bool((~real).any())))
            offset += real.numel()
        return Packing(index, B, T, tuple(groups), back)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...): the real tokens' rows."""
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), zeros at padding."""
        full = x.new_zeros(self.batch * self.length, *x.shape[1:])
        return full.index_copy(0, self.index, x).view(self.batch, self.length, *x.shape[1:])

    def with_masks(self, make, causal: bool) -> Packing:
        """The groups with their additive attention masks, ``make(group)`` -> (rows or 1, H or 1,
        length, length) or None (then ``causal`` says whether SDPA applies its causal triangle)."""
        return replace(self, causal=causal, groups=tuple(replace(g, attn_mask=make(g)) for g in self.groups))

    def to_groups(self, t: torch.Tensor) -> list[torch.Tensor]:
        """(N, heads, D) -> per group (rows, heads, length, D), zeros at padding."""
        padded = torch.cat([t, t.new_zeros(1, *t.shape[1:])])  # row N: what padding reads
        out = []
        for g in self.groups:
            rows, width = g.shape
            out.append(padded.index_select(0, g.gather).view(rows, width, *t.shape[1:]).transpose(1, 2))
        return out

    def from_groups(self, ys: list[torch.Tensor]) -> torch.Tensor:
        """Per group (rows, heads, length, D) -> (N, heads * D) in token order."""
        flat = [y.transpose(1, 2).reshape(-1, y.shape[1] * y.shape[3]) for y in ys]
        return torch.cat(flat).index_select(0, self.back)
