"""KV-cache decoding equals the no-cache reference (logits within 1e-5) for every family that decodes."""

from __future__ import annotations

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.models.cache import KVCache

TINY = dict(vocab_size=97, d_model=32, n_layer=2, n_head=4, max_seq_len=64)
DECODERS = {
    "gpt": ModelConfig.from_name("tiny-gpt-1m", **TINY),
    "llama-gqa": ModelConfig.from_name("tiny-llama-10m", **TINY, n_kv_head=2, d_ff=48),
    "sinusoidal": ModelConfig.from_name("tiny-gpt-1m", **TINY, pos="sinusoidal"),
    "relative": ModelConfig.from_name("tiny-gpt-1m", **TINY, pos="relative", scale_attn=False),
}


def left_padded(lengths, total, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (len(lengths), total), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, total - n :] = 1
    return ids.masked_fill(mask == 0, 0), mask


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("name", DECODERS)
@torch.no_grad()
def test_decoder_cache_equals_full_forward(name):
    """Prefill a left-padded prompt, then feed tokens one (and three) at a time."""
    torch.manual_seed(0)
    model = build_model(DECODERS[name]).eval()
    ids, mask = left_padded([9, 5, 2], total=20)
    prompt = 11  # the first 11 columns are the prompt (with padding), the rest arrive step by step
    full = model(ids, attention_mask=mask, position_ids=positions(mask)).logits
    cache = KVCache.for_model(model, batch_size=3, max_len=24)
    pieces = [model(ids[:, :prompt], attention_mask=mask[:, :prompt], position_ids=positions(mask)[:, :prompt],
                    cache=cache).logits]  # fmt: skip
    steps = [1, 1, 3, 1, 1, 1, 1]  # several new tokens at once must work too
    start = prompt
    for n in steps:
        end = start + n
        out = model(ids[:, start:end], attention_mask=mask[:, :end], position_ids=positions(mask)[:, start:end],
                    cache=cache)  # fmt: skip
        pieces.append(out.logits)
        start = end
    assert cache.length == 20
    incremental = torch.cat(pieces, dim=1)
    real = mask.bool()
    torch.testing.assert_close(incremental[real], full[real], atol=1e-5, rtol=0)


@torch.no_grad()
def test_decoder_cache_without_mask_uses_default_positions():
    torch.manual_seed(0)
    model = build_model(DECODERS["llama-gqa"]).eval()
    ids = torch.randint(0, 97, (2, 12))
    full = model(ids).logits
    cache = KVCache.for_model(model, 2, 12)
    steps = [model(ids[:, :5], cache=cache).logits] + [
        model(ids[:, t : t + 1], cache=cache).logits for t in range(5, 12)
    ]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_encoder_decoder_cache_equals_full_forward():
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny-t5-1m", **TINY, head_dim=8, d_ff=48)
    model = build_model(cfg).eval()
    src, src_mask = left_padded([10, 4], total=10)
    src_mask = src_mask.flip(-1)  # encoders see right padding
    tgt = torch.randint(3, 97, (2, 9))
    memory, _ = model.encode(src, src_mask)
    full, *_ = model.decode(tgt, memory, src_mask)
    cache = KVCache.for_model(model, 2, 9)
    pieces = [model.decode(tgt[:, :1], memory, src_mask, cache=cache)[0]]
    assert cache.layers[0].cross_k is not None
    cross_k = cache.layers[0].cross_k
    for t in range(1, 9):
        pieces.append(model.decode(tgt[:, t : t + 1], memory, src_mask, cache=cache)[0])
    assert cache.layers[0].cross_k is cross_k  # computed once
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)


def test_cache_overflow_and_encoder_are_clear_errors():
    model = build_model(DECODERS["gpt"]).eval()
    cache = KVCache.for_model(model, 1, 4)
    with pytest.raises(LlmkitError, match="KV cache holds 4 positions; 0 used, 5 more requested"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(LlmkitError, match="encoder-only"):
        KVCache(ModelConfig.from_name("tiny-bert-1m"), 1, 4)


@torch.no_grad()
def test_reorder_selects_rows():
    torch.manual_seed(0)
    model = build_model(DECODERS["gpt"]).eval()
    ids = torch.randint(0, 97, (3, 6))
    cache = KVCache.for_model(model, 3, 8)
    model(ids, cache=cache)
    nxt = torch.randint(0, 97, (3, 1))
    cache.reorder(torch.tensor([2, 2, 0]))
    out = model(nxt, cache=cache).logits
    ref = model(torch.cat([ids[[2, 2, 0]], nxt], 1)).logits[:, -1:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
