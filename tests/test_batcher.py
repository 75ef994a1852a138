"""Continuous batching (llmkit.inference.batcher): requests share steps and decode as they would alone.

The reference is ``generate`` of each prompt alone (greedy). Prompts differ in length and in
max_new_tokens, more requests arrive than there are rows (so some join while others are mid-way),
and the total passes the context window (rows of different ages share no columns in the paged cache),
for a learned-position GPT and a RoPE Llama with grouped-query attention. tests/test_batcher_paged.py
tests the cache, the batched prefill and running out of room.
"""

from __future__ import annotations

import threading

import pytest
import torch

from llmkit import checkpoint
from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.inference import generate
from llmkit.inference.batcher import Batcher, Request, TokenEvent
from llmkit.models import build_model

PROMPTS = ["The cat", "def f(x):\n    return", "A banana is yellow. The dog ate", "The", "x"]
NEW = [30, 20, 25, 50, 12]


def tiny(tiny_checkpoint, preset: str, **kw):
    """conftest's tiny model (window 64) loaded with its tokenizer and generation config."""
    return checkpoint.load(tiny_checkpoint(preset, window=64, **kw))


class Collector:
    """Events per request, and an Event set when every request has finished."""

    def __init__(self, count: int) -> None:
        self.events: list[list[TokenEvent]] = [[] for _ in range(count)]
        self.left, self.done = count, threading.Event()

    def callback(self, i: int):
        def on_token(event: TokenEvent) -> None:
            self.events[i].append(event)
            if event.finish_reason is not None:
                self.left -= 1
                if self.left == 0:
                    self.done.set()

        return on_token


@pytest.fixture(scope="module", params=["tiny-gpt-1m", "tiny-llama-10m"])
def model(request, tiny_checkpoint):
    kw = {"n_kv_head": 2} if request.param == "tiny-llama-10m" else {}
    return tiny(tiny_checkpoint, request.param, **kw)


def run_all(model, prompts, news, max_batch: int, **settings) -> tuple[list[list[TokenEvent]], list[int]]:
    batcher = Batcher(model, max_batch=max_batch).start()
    free = batcher.cache.available
    got = Collector(len(prompts))
    try:
        for i, (p, n) in enumerate(zip(prompts, news, strict=True)):
            cfg = model.generation_config.replace(max_new_tokens=n, eos_token_id=[], **settings)
            batcher.submit(Request(model.tokenizer.encode(p), cfg, got.callback(i)))
        assert got.done.wait(30)
    finally:
        batcher.close()
    assert batcher.cache.available == free  # every row gave its blocks back
    return got.events, batcher.step_sizes


def test_batched_greedy_equals_each_prompt_alone(model):
    expected = [generate(model, p, max_new_tokens=n, eos_token_id=[])[0] for p, n in zip(PROMPTS, NEW, strict=True)]
    events, sizes = run_all(model, PROMPTS, NEW, max_batch=3)
    for want, got in zip(expected, events, strict=True):
        assert [e.token_id for e in got] == want.token_ids
        assert "".join(e.text for e in got) == want.text
        assert got[-1].finish_reason == "length"
    assert max(sizes) == 3  # requests shared steps, never more than the rows
    # the shortest of the first three ends after 19 steps; later full steps mean a waiting request joined
    assert sizes.count(3) > min(NEW[:3])
    assert len(sizes) < sum(NEW)  # far fewer steps than one request at a time
    assert len(sizes) >= max(NEW) - 1  # the longest request's steps (its first token comes from the prefill)


def test_seeded_sampling_does_not_depend_on_the_batch(model):
    """Each request draws from its own generator: alone or in company, the same seed, the same text."""
    settings = dict(do_sample=True, temperature=0.9, top_k=20, seed=7)
    alone, _ = run_all(model, PROMPTS[:1], NEW[:1], max_batch=1, **settings)
    together, _ = run_all(model, PROMPTS, NEW, max_batch=4, **settings)
    assert [e.token_id for e in alone[0]] == [e.token_id for e in together[0]]


def test_stop_strings_and_logprobs(tiny_checkpoint):
    model = tiny(tiny_checkpoint, "tiny-gpt-1m")
    want = generate(model, "The cat", max_new_tokens=20, eos_token_id=[])[0].text
    stop = want[3:6]
    got = Collector(1)
    batcher = Batcher(model, max_batch=2).start()
    cfg = model.generation_config.replace(max_new_tokens=20, eos_token_id=[], stop_strings=[stop])
    batcher.submit(Request(model.tokenizer.encode("The cat"), cfg, got.callback(0), logprobs=3))
    assert got.done.wait(10)
    batcher.close()
    events = got.events[0]
    assert "".join(e.text for e in events) == want[: want.index(stop)]
    assert events[-1].finish_reason == "stop"
    for e in events:  # greedy: the token drawn is the most likely one, and its logprob is the best
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0] == (e.token_id, pytest.approx(e.logprob))


def test_a_cancelled_request_frees_its_row(tiny_checkpoint):
    model = tiny(tiny_checkpoint, "tiny-gpt-1m")
    batcher = Batcher(model, max_batch=2).start()
    first, seen = threading.Event(), []
    request: Request

    def on_token(event: TokenEvent) -> None:
        seen.append(event)
        if len(seen) == 3:
            request.cancel()  # as the server does when the client goes away
            first.set()

    request = Request(model.tokenizer.encode("The"), model.generation_config.replace(max_new_tokens=60), on_token)
    batcher.submit(request)
    assert first.wait(10)
    # a second request still runs to the end, alone: the cancelled one left the batch
    got = Collector(1)
    batcher.submit(
        Request(model.tokenizer.encode("x"), model.generation_config.replace(max_new_tokens=5), got.callback(0))
    )
    assert got.done.wait(10)
    batcher.close()
    assert len(seen) <= 4 and all(e.finish_reason is None for e in seen)
    assert batcher.slots == [] and batcher.step_sizes[-1] == 1


def test_checks(tiny_checkpoint):
    model = tiny(tiny_checkpoint, "tiny-gpt-1m")
    batcher = Batcher(model, max_batch=1)
    with pytest.raises(LlmkitError, match="context window of 64"):
        batcher.check(60, 10)
    with pytest.raises(LlmkitError, match="max_batch=0"):
        Batcher(model, max_batch=0)


def test_only_decoder_models():
    bert = build_model(ModelConfig.from_name("tiny-bert-1m", n_layer=1))
    with pytest.raises(LlmkitError, match="decoder-only"):
        Batcher(bert)


def test_a_failing_request_ends_alone_and_the_others_go_on(tiny_checkpoint):
    """One row that raises mid-way (here its callback, on its third token) gets its own error; the
    rows decoded with it in the same steps finish with the text they would have had alone."""
    model = tiny(tiny_checkpoint, "tiny-gpt-1m")
    prompts, news = PROMPTS[:3], [20, 20, 20]
    expected = [generate(model, p, max_new_tokens=n, eos_token_id=[])[0] for p, n in zip(prompts, news, strict=True)]
    batcher = Batcher(model, max_batch=4).start()
    got, errors, poison_tokens = Collector(len(prompts)), [], []

    def poison(event: TokenEvent) -> None:
        poison_tokens.append(event)
        if len(poison_tokens) == 3:
            raise RuntimeError("this row breaks")

    try:
        cfg = model.generation_config.replace(max_new_tokens=20, eos_token_id=[])
        batcher.submit(Request(model.tokenizer.encode("The dog"), cfg, poison, errors.append))
        for i, p in enumerate(prompts):
            batcher.submit(Request(model.tokenizer.encode(p), cfg, got.callback(i)))
        assert got.done.wait(30)
    finally:
        batcher.close()
    assert [str(e) for e in errors] == ["this row breaks"] and len(poison_tokens) == 3
    for want, events in zip(expected, got.events, strict=True):
        assert [e.token_id for e in events] == want.token_ids
    assert batcher.slots == []


def test_nan_scores_fail_their_row_with_a_clear_error(tiny_checkpoint):
    from llmkit.inference.batcher import _Slot

    model = tiny(tiny_checkpoint, "tiny-gpt-1m")
    cfg = model.generation_config.replace(max_new_tokens=5)
    slot = _Slot(Request([1, 2], cfg, lambda e: None), model.tokenizer, torch.device("cpu"))
    scores = torch.zeros(1, model.config.vocab_size)
    assert slot.choose(scores.clone()).token_id == 0  # finite scores are fine
    for bad in (float("nan"), float("inf")):
        scores[0, 3] = bad
        with pytest.raises(LlmkitError, match="NaN or infinite"):
            slot.choose(scores)
