"""The server's batcher on its paged KV cache: prompts prefilled together and in chunks, rows joining and
leaving a bounded pool, rows evicted when it runs out, and one-query attention as grouped matmuls.

References: the model run on each prompt alone (logits within 1e-5 in fp32), ``generate`` of each prompt
alone (greedy tokens identical), torch's ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from llmkit import checkpoint
from llmkit.errors import LlmkitError
from llmkit.inference import generate
from llmkit.inference.batcher import Batcher, Request, TokenEvent
from llmkit.inference.decode_attention import OneQueryAttention, one_query_attention
from llmkit.inference.paged import PagedKVCache, bytes_per_token

PROMPTS = ["The cat", "def f(x):\n    return", "A banana is yellow. The dog ate", "The", "x", "class Point:"]
NEW = [30, 20, 25, 40, 12, 18]


@pytest.fixture(scope="module", params=["tiny-gpt-1m", "tiny-llama-10m"])
def model(request, tiny_checkpoint):
    """conftest's tiny model (window 64): learned positions, or RoPE with grouped-query attention."""
    kw = {"n_kv_head": 2} if request.param == "tiny-llama-10m" else {}
    return checkpoint.load(tiny_checkpoint(request.param, window=64, **kw))


def mb(model, positions: int) -> float:
    """--kv-cache-mb for a pool of ``positions`` positions of ``model``."""
    return positions * bytes_per_token(model.config, torch.float32) / 2**20


def run_all(batcher: Batcher, model, prompts, news, **settings) -> list[list[TokenEvent]]:
    events: list[list[TokenEvent]] = [[] for _ in prompts]
    left, done = [len(prompts)], threading.Event()

    def callback(i):
        def on_token(event: TokenEvent) -> None:
            events[i].append(event)
            if event.finish_reason is not None:
                left[0] -= 1
                if not left[0]:
                    done.set()

        return on_token

    batcher.start()
    try:
        for i, (p, n) in enumerate(zip(prompts, news, strict=True)):
            cfg = model.generation_config.replace(max_new_tokens=n, eos_token_id=[], **settings)
            batcher.submit(Request(model.tokenizer.encode(p), cfg, callback(i)))
        assert done.wait(60)
    finally:
        batcher.close()
    return events


def assert_as_alone(model, events, prompts=PROMPTS, news=NEW, **settings) -> None:
    for p, n, got in zip(prompts, news, events, strict=True):
        want = generate(model, p, max_new_tokens=n, eos_token_id=[], **settings)[0]
        assert [e.token_id for e in got] == want.token_ids
        assert "".join(e.text for e in got) == want.text


# ---- the cache ----------------------------------------------------------------------------------
def test_blocks_are_taken_as_tokens_need_them_and_given_back(model):
    cache = PagedKVCache(model.config, tokens=64, block_size=16)
    assert cache.capacity == 64 and len(cache.free) == 4
    a, b = [], []
    assert cache.grow(a, 1) and cache.grow(a, 16) and a == [1]  # one block holds 16 positions
    assert cache.grow(a, 17) and len(a) == 2
    assert not cache.grow(b, 48) and b == [] and len(cache.free) == 2  # too few free: nothing taken
    assert cache.grow(b, 32) and not cache.free
    cache.release(a)
    assert a == [] and sorted(cache.free) == [1, 2]
    assert cache.grow(b, 64) and len(b) == 4


def test_prefix_blocks_are_found_shared_and_forgotten_last(model):
    cache = PagedKVCache(model.config, tokens=48, block_size=4)  # 12 blocks
    tokens = list(range(10, 30))
    a = []
    assert cache.grow(a, 10)
    digests = [b""]
    for j in range(2):  # its two full blocks, registered as a prefill would
        digests.append(cache.digest(digests[-1], tokens[4 * j : 4 * j + 4]))
        cache.register(a[j], digests[-1])
    found, last = cache.match(tokens[:7] + [99] * 5, limit=11)  # the same 7 first tokens: one full block
    assert found == a[:1] and last == digests[1] and cache.refs[a[0]] == 2
    found2, _ = cache.match(tokens, limit=20)
    assert found2 == a[:2] and cache.match([1] + tokens[1:], limit=20) == ([], b"")  # a prefix, not a bag
    first, second, third = a
    cache.release(a)
    assert cache.refs[first] == 2 and cache.refs[third] == 0 and not cache.idle  # still held by the matches
    cache.release(found)
    cache.release(found2)
    assert list(cache.idle) == [second, first] and cache.available == 12
    assert cache.match(tokens, limit=8)[0] == [first, second] and not cache.idle  # found again after release
    cache.release([first, second])
    big = []
    assert cache.grow(big, 44) and second in big and first not in big  # no free block left: the oldest idle
    assert cache.match(tokens, limit=20)[0] == [first] and len(cache.blocks) == 1  # the second's prefix is gone


def test_the_pool_follows_the_setting_not_rows_times_the_window(model):
    batcher = Batcher(model, max_batch=64, kv_cache_mb=mb(model, 48))
    assert batcher.cache.capacity == 48  # 64 rows x the window of 64 positions would be 4096
    pool = sum(t.numel() * t.element_size() for t in batcher.cache.k + batcher.cache.v)
    scratch = batcher.cache.block_size
    assert pool == (48 + scratch) * bytes_per_token(model.config, torch.float32)
    with pytest.raises(LlmkitError, match="KV cache of 48 positions"):
        batcher.check(30, 30)  # fits the window, not the pool: refused at once
    batcher.check(30, 18)
    with pytest.raises(LlmkitError, match="--kv-cache-mb"):
        Batcher(model, kv_cache_mb=mb(model, 4))  # less than one block


@torch.inference_mode()
def test_batched_chunked_prefill_equals_each_prompt_alone(model):
    """Three prompts of different lengths in one left-padded pass, in two chunks, then a decoding step:
    every position's logits equal the model's on that prompt alone (1e-5, fp32)."""
    ids = [model.tokenizer.encode(p) for p in PROMPTS[:3]]
    cache = PagedKVCache(model.config, tokens=256, block_size=4)  # small blocks: rows span several
    tables = [[] for _ in ids]
    for table, x in zip(tables, ids, strict=True):
        assert cache.grow(table, len(x) + 1)
    got = [[] for _ in ids]
    cut = [min(3, len(x)) for x in ids]
    for part in (lambda x, c: x[:c], lambda x, c: x[c:]):
        rows = [r for r in range(len(ids)) if part(ids[r], cut[r])]
        chunks = [part(ids[r], cut[r]) for r in rows]
        pasts = [0 if len(got[r]) == 0 else cut[r] for r in rows]
        view = cache.view([tables[r] for r in rows], pasts, [len(c) for c in chunks])
        width = max(len(c) for c in chunks)
        tokens = torch.tensor([[0] * (width - len(c)) + c for c in chunks])
        logits = model(tokens, attention_mask=view.attention_mask, position_ids=view.position_ids, cache=view).logits
        for j, (r, c) in enumerate(zip(rows, chunks, strict=True)):
            got[r].append(logits[j, width - len(c) :])
    nxt = [5, 6, 7]
    view = cache.view(tables, [len(x) for x in ids], [1, 1, 1])
    with OneQueryAttention():
        step = model(torch.tensor(nxt)[:, None], attention_mask=view.attention_mask,
                     position_ids=view.position_ids, cache=view).logits[:, -1]  # fmt: skip
    for r, x in enumerate(ids):
        alone = model(torch.tensor([x + [nxt[r]]])).logits[0]
        torch.testing.assert_close(torch.cat(got[r]), alone[:-1], atol=1e-5, rtol=0)
        torch.testing.assert_close(step[r], alone[-1], atol=1e-5, rtol=0)


# ---- the batcher --------------------------------------------------------------------------------
def test_arrivals_are_prefilled_together_in_chunks_and_decode_as_alone(model):
    """A budget of 24 positions a pass: the six prompts take a few passes of several rows each, the
    longest in chunks, and every request's tokens equal generate's of its prompt alone."""
    batcher = Batcher(model, max_batch=6, prefill_tokens=24)
    events = run_all(batcher, model, PROMPTS, NEW)
    assert_as_alone(model, events)
    assert max(batcher.prefill_sizes) > 1  # prompts shared a pass
    longest = max(len(model.tokenizer.encode(p)) for p in PROMPTS)
    assert len(batcher.prefill_sizes) < len(PROMPTS) + longest // 24  # not one pass per prompt
    assert max(batcher.step_sizes) == 6


def test_rows_wait_for_room_and_are_evicted_when_it_runs_out(model):
    """A pool of 64 positions for six requests of up to 52 tokens each: requests wait for blocks, decoding
    rows that need a block take those of the row that joined last, which later re-runs its tokens; every
    request still ends with generate's tokens."""
    batcher = Batcher(model, max_batch=6, kv_cache_mb=mb(model, 64))
    events = run_all(batcher, model, PROMPTS, NEW)
    assert_as_alone(model, events)
    assert batcher.evictions > 0
    assert batcher.cache.available == batcher.cache.capacity // batcher.cache.block_size  # all given back


def test_prompts_that_share_a_prefix_read_it_once(model):
    """Six prompts after one long shared system text: the first computes it, the others take its blocks
    (at most 8 tokens of each left to run besides their own), and every request's tokens equal generate's."""
    system = "You are a careful assistant. Answer briefly. "
    prompts = [system + p for p in PROMPTS]
    shared = len(model.tokenizer.encode(system)) // 8 * 8 - 8  # full blocks surely inside the shared tokens
    batcher = Batcher(model, max_batch=6, prefill_tokens=512)
    news = [8] * 6
    events = run_all(batcher, model, prompts[:1], news[:1])
    batcher._closed, batcher._thread = False, None  # the same batcher again, its cache kept
    events += run_all(batcher, model, prompts[1:], news[1:])
    assert_as_alone(model, events, prompts, news)
    assert batcher.prefix_hits >= 5 * shared > 0
    burst = Batcher(model, max_batch=6, prefill_tokens=24)  # all at once: the first pass registers for the rest
    assert_as_alone(model, run_all(burst, model, prompts, news), prompts, news)
    assert burst.prefix_hits >= 4 * shared
    off = Batcher(model, max_batch=6, prefix_cache=False)
    assert_as_alone(model, run_all(off, model, prompts, news), prompts, news)
    assert off.prefix_hits == 0


def test_plain_and_processed_rows_share_a_batch(model):
    """Plain greedy rows (one argmax for the batch) beside rows with a repetition penalty, a logit bias,
    EOS held back by min_new_tokens and a seeded draw: each equals generate with its own settings."""
    settings = [{}, {"repetition_penalty": 1.3}, {"logit_bias": {5: 3.0}}, {},
                {"do_sample": True, "temperature": 0.8, "top_k": 10, "seed": 3}, {"min_new_tokens": 10}]  # fmt: skip
    batcher = Batcher(model, max_batch=6).start()
    events: list[list[TokenEvent]] = [[] for _ in PROMPTS]
    done = [threading.Event() for _ in PROMPTS]
    try:
        for i, (p, extra) in enumerate(zip(PROMPTS, settings, strict=True)):
            cfg = model.generation_config.replace(max_new_tokens=15, **extra)

            def on_token(event, i=i):
                events[i].append(event)
                if event.finish_reason is not None:
                    done[i].set()

            batcher.submit(Request(model.tokenizer.encode(p), cfg, on_token, logprobs=2))
        assert all(d.wait(30) for d in done)
    finally:
        batcher.close()
    for p, extra, got in zip(PROMPTS, settings, events, strict=True):
        want = generate(model, p, max_new_tokens=15, **extra)[0]
        assert [e.token_id for e in got] == want.token_ids
        for e in got:  # alternatives are the model's own most likely tokens, best first
            (_, best), (_, second) = e.top_logprobs
            assert best >= second and best >= e.logprob - 1e-6
            if not extra:
                assert e.top_logprobs[0] == (e.token_id, pytest.approx(e.logprob))
    assert max(batcher.step_sizes) > 1


def test_prompt_scores_of_a_chunked_prefill(model):
    """echo + logprobs with a prompt read in chunks of 4: log p(token i | before) equals log_softmax of the
    model's logits on the whole prompt."""
    ids = model.tokenizer.encode(PROMPTS[2])
    got, done = [], threading.Event()
    batcher = Batcher(model, max_batch=2, prefill_tokens=4).start()
    try:
        cfg = model.generation_config.replace(max_new_tokens=0)
        batcher.submit(Request(ids, cfg, lambda e: None, logprobs=3, prompt_logprobs=True,
                               on_prompt=lambda s: (got.append(s), done.set())))  # fmt: skip
        assert done.wait(30)
    finally:
        batcher.close()
    with torch.inference_mode():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    scores = got[0]
    assert scores.logprobs[0] is None and len(scores.logprobs) == len(ids) > 8
    want = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    torch.testing.assert_close(torch.tensor(scores.logprobs[1:]), want, atol=1e-5, rtol=0)
    assert [t for t, _ in scores.top_logprobs[1]] == logp[0].topk(3).indices.tolist()
    assert len(batcher.prefill_sizes) >= len(ids) // 4 and not batcher.slots


# ---- one-query attention ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads, kv_heads", [(9, 3), (4, 4)])
def test_one_query_attention_equals_sdpa(dtype, heads, kv_heads):
    torch.manual_seed(0)
    B, S, D = 5, 23, 16
    q = torch.randn(B, 1, heads, D, dtype=dtype).transpose(1, 2)  # strided, as the model's views are
    k = torch.randn(B, S, kv_heads, D, dtype=dtype).transpose(1, 2)
    v = torch.randn(B, S, kv_heads, D, dtype=dtype).transpose(1, 2)
    valid = torch.rand(B, S) > 0.3
    valid[:, -1] = True
    mask = torch.where(valid, 0.0, torch.finfo(dtype).min).to(dtype)[:, None, None, :]
    per_head = mask.expand(B, heads, 1, S) + torch.randn(B, heads, 1, S, dtype=dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for m in (None, mask, per_head):
        m32 = None if m is None else m.float()
        want = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=m32, scale=0.3, enable_gqa=True
        )
        got = one_query_attention(q, k, v, m, 0.3)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, **tol)
        with OneQueryAttention():
            routed = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3, enable_gqa=True)
        torch.testing.assert_close(routed.float(), want, **tol)


def test_the_mode_leaves_other_attention_to_torch(monkeypatch):
    import llmkit.inference.decode_attention as module

    calls = []
    monkeypatch.setattr(module, "one_query_attention", lambda *a: calls.append(a) or a[0])
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)
    with OneQueryAttention():
        F.scaled_dot_product_attention(q, k, k, is_causal=True)  # a prompt: three queries
        F.scaled_dot_product_attention(q[:, :, :1], k, k, dropout_p=0.5)  # training
        assert not calls
        F.scaled_dot_product_attention(q[:, :, :1], k, k)
    assert len(calls) == 1


def test_a_row_with_nan_scores_fails_alone_in_a_batched_choice(model):
    """The batched choice (one max over the batch) finds the rows whose scores are NaN or +inf: each gets
    its own error and leaves, the others take their argmax."""
    from llmkit.inference.batch_row import _Slot

    batcher = Batcher(model, max_batch=4)
    cfg = model.generation_config.replace(max_new_tokens=5)
    events, errors = [[] for _ in range(4)], [[] for _ in range(4)]
    rows = [_Slot(Request([1, 2], cfg, events[i].append, errors[i].append), model.tokenizer, batcher.device)
            for i in range(4)]  # fmt: skip
    batcher.slots = list(rows)
    scores = torch.randn(4, model.config.vocab_size)
    scores[1, 7], scores[3, 2] = float("nan"), float("inf")
    batcher._emit(rows, scores)
    assert [len(e) for e in events] == [1, 0, 1, 0] and [len(e) for e in errors] == [0, 1, 0, 1]
    assert "NaN or infinite" in str(errors[1][0]) and batcher.slots == [rows[0], rows[2]]
    for r in (0, 2):
        assert events[r][0].token_id == int(scores[r].argmax())
        assert events[r][0].logprob == pytest.approx(float(scores[r].log_softmax(-1).max()), abs=1e-5)
