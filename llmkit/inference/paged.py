"""A paged KV cache (vLLM's PagedAttention layout) for the server's batcher: memory follows the tokens held.

Keys and values live in one pool per layer of ``blocks x block_size`` positions, (slots, K, D); a sequence
owns a list of blocks (its block table) that grows as it does, so a batch of short requests costs what
their tokens need, not rows x the context window (64 rows of SmolLM2's 8192 positions would be 12 GB in
bf16). Block 0 is scratch: slot 0 stays zero and is what padding reads, slot 1 is where padding writes.

A forward pass (``PagedKVCache.view``) runs rows with ``past`` cached tokens and ``new`` tokens each,
left-padded to the longest ``new``: the model sees a cache of ``W = max(past)`` positions and ``S = W + T``
keys, each row's past right-aligned before the new tokens, so the causal mask the model builds (queries
at the last T columns) holds for every row, and an attention mask hides the padding. Each layer's write
scatters the real new keys/values into their slots and gathers the (B, K, S, D) keys/values SDPA reads.
Gathering copies each row's keys once per layer and step; the other choice, rows sharing columns in one
dense tensor (the batcher before this), reads them in place but sizes every row by the longest, and a
request of 4k tokens among 63 short ones would cost 64 x 4k positions.

The pool is allocated with ``torch.empty`` and blocks are handed out lowest first, so the operating system
commits its memory as it is first used: ``--kv-cache-mb`` bounds the memory, traffic decides how much is
touched.

Prefix caching (vLLM's automatic prefix caching): a full block of prompt tokens is registered under a digest
of its tokens and every token before it (a chain of BLAKE2b digests, so equal digests mean equal prefixes),
and a later prompt that starts with the same tokens takes those blocks instead of computing them: chat
requests share their template's system prompt (SmolLM2's: 24 of a short question's 37 tokens). Blocks are
counted by the rows holding them; a registered block no row holds stays ``idle``, reusable on a match, and is
taken back (oldest first) only when no free block is left. Rows write only past their shared blocks, which
are full, so a shared block never changes.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError

ZERO, TRASH = 0, 1  # scratch slots of block 0: what padding reads (zeros), where padding writes


def bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes the keys and values of one position take over all layers."""
    return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * torch.empty((), dtype=dtype).element_size()


class PagedKVCache:
    """Per-layer key/value pools and the free blocks; sequences hold lists of block ids (``grow``, ``release``)."""

    def __init__(self, cfg: ModelConfig, tokens: int, block_size: int = 16, dtype=torch.float32, device="cpu") -> None:
        if tokens < block_size:
            raise LlmkitError(f"a KV cache of {tokens} positions is too small", f"give it {block_size} or more")
        self.block_size = block_size
        n_blocks = -(-tokens // block_size) + 1  # + block 0, the scratch
        shape = (n_blocks * block_size, cfg.n_kv_head, cfg.head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        for pool in (*self.k, *self.v):
            pool[:block_size].zero_()
        self.free = list(range(n_blocks - 1, 0, -1))  # pop() hands out the lowest: touched memory grows with use
        self.capacity = (n_blocks - 1) * block_size  # positions the sequences can hold in all
        self.device = torch.device(device)
        self.refs = [0] * n_blocks  # rows holding each block
        self.blocks: dict[bytes, int] = {}  # digest of a full prompt block (and all before it) -> its block
        self.digest_of: dict[int, bytes] = {}  # the other way
        self.idle: OrderedDict[int, None] = OrderedDict()  # registered blocks no row holds, oldest first

    @classmethod
    def for_model(cls, model: nn.Module, megabytes: float, block_size: int = 16) -> PagedKVCache:
        """A pool of ``megabytes`` in the model's dtype, on its device."""
        param = next(model.parameters())
        tokens = int(megabytes * 2**20) // bytes_per_token(model.config, param.dtype)
        if tokens < block_size:
            raise LlmkitError(
                f"--kv-cache-mb {megabytes:g} holds {tokens} positions of this model "
                f"({bytes_per_token(model.config, param.dtype)} bytes each)",
                "give the KV cache more memory",
            )
        return cls(model.config, tokens, block_size, param.dtype, param.device)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @property
    def available(self) -> int:
        """Blocks a row can take: the free ones and the idle registered ones."""
        return len(self.free) + len(self.idle)

    def grow(self, table: list[int], tokens: int) -> bool:
        """Extend ``table`` to hold ``tokens`` positions; False (and nothing taken) when too few blocks are free."""
        need = self.blocks_for(tokens) - len(table)
        if need > self.available:
            return False
        for _ in range(max(need, 0)):
            if self.free:
                block = self.free.pop()
            else:  # the oldest idle block: its prefix is forgotten
                block, _ = self.idle.popitem(last=False)
                del self.blocks[self.digest_of.pop(block)]
            self.refs[block] = 1
            table.append(block)
        return True

    def release(self, table: list[int]) -> None:
        """Give the blocks of ``table`` back (a registered block stays reusable until its room is needed)."""
        for block in reversed(table):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.digest_of:
                    self.idle[block] = None
                else:
                    self.free.append(block)
        table.clear()

    def digest(self, parent: bytes, tokens: list[int]) -> bytes:
        """The digest of a block of ``tokens`` after the prefix whose digest is ``parent`` (b"" at the start)."""
        return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()

    def match(self, tokens: list[int], limit: int) -> tuple[list[int], bytes]:
        """The registered blocks that hold the first full blocks of ``tokens`` (at most ``limit`` positions),
        taken for a new row (counted as held), and the digest of the last one."""
        bs, found, parent = self.block_size, [], b""
        for start in range(0, limit - bs + 1, bs):
            digest = self.digest(parent, tokens[start : start + bs])
            block = self.blocks.get(digest)
            if block is None:
                break
            self.refs[block] += 1
            self.idle.pop(block, None)
            found.append(block)
            parent = digest
        return found, parent

    def register(self, block: int, digest: bytes) -> None:
        """Make a full block of prompt tokens findable by ``match`` (unless the same prefix already is)."""
        if digest not in self.blocks and block not in self.digest_of:
            self.blocks[digest], self.digest_of[block] = block, digest

    def view(self, tables: list[list[int]], pasts: list[int], news: list[int]) -> PassView:
        """The cache one forward pass sees (rows with ``pasts[r]`` cached and ``news[r]`` new tokens, already
        in their tables' room), with the attention mask (B, S) and positions (B, T) it needs."""
        return PassView(self, tables, pasts, news)


class PassView:
    """What ``model(tokens, attention_mask, position_ids, cache=view)`` needs for one pass over paged rows.

    ``length`` (W) is what the model counts as cached; ``layers[i].write`` stores the new keys/values and
    returns the gathered ones. ``attention_mask`` and ``position_ids`` go to the model with the tokens,
    which are left-padded to T.
    """

    def __init__(self, cache: PagedKVCache, tables: list[list[int]], pasts: list[int], news: list[int]) -> None:
        dev, bs = cache.device, cache.block_size
        past = torch.tensor(pasts, device=dev)[:, None]  # (B, 1)
        new = torch.tensor(news, device=dev)[:, None]
        W, T = max(pasts), max(news)
        self.length, self.max_len = W, W + T
        cols = torch.arange(W + T, device=dev)[None]  # (1, S)
        # column -> the row's position: past right-aligned in [0, W), new tokens right-aligned in [W, S)
        pos = torch.where(cols < W, cols - (W - past), past + cols - W - (T - new))  # (B, S)
        valid = torch.where(cols < W, pos >= 0, cols - W >= T - new)
        width = max(max(len(t) for t in tables), 1)
        table = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=dev)  # (B, blocks)
        p = pos.clamp(min=0)
        slots = table.gather(1, torch.div(p, bs, rounding_mode="floor")) * bs + p % bs
        self.gather = torch.where(valid, slots, ZERO)  # (B, S)
        self.scatter = torch.where(valid[:, W:], slots[:, W:], TRASH).reshape(-1)  # (B * T,)
        self.attention_mask = valid.long()
        self.position_ids = p[:, W:]  # (B, T)
        self.layers = [_LayerView(self, k, v) for k, v in zip(cache.k, cache.v, strict=True)]

    def check_room(self, new: int) -> None:
        """The rows' room was taken from the pool before the pass (PagedKVCache.grow)."""


class _LayerView:
    def __init__(self, view: PassView, k: torch.Tensor, v: torch.Tensor) -> None:
        self.view, self.k, self.v = view, k, v
        self.cross_k = self.cross_v = None

    def write(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new k, v (B, K, T, D) in their slots; return every row's keys/values (B, K, S, D)."""
        B, K, T, D = k.shape
        view = self.view
        self.k.index_copy_(0, view.scatter, k.transpose(1, 2).reshape(B * T, K, D))
        self.v.index_copy_(0, view.scatter, v.transpose(1, 2).reshape(B * T, K, D))
        S = view.gather.shape[1]
        keys = self.k.index_select(0, view.gather.reshape(-1)).view(B, S, K, D).transpose(1, 2)
        values = self.v.index_select(0, view.gather.reshape(-1)).view(B, S, K, D).transpose(1, 2)
        return keys, values
