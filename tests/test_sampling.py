"""The per-step pieces: warpers equal transformers' processors, and draws follow the filtered distribution.

Distribution tests draw 20,000 tokens from a fixed logits vector and run Pearson's chi-square test
against the exact filtered distribution, written out here from its definition (not by calling the
code under test); filtered-out tokens must never be drawn. scipy gives the p-value when installed;
otherwise the statistic is compared with the critical value from the regularized gamma function.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmkit.config import GenerationConfig
from llmkit.inference import logits_to_probs, sample
from llmkit.inference.sampling import MIN_TEMPERATURE, apply_repetition_penalty, next_tokens, suppress

DRAWS = 20_000
ALPHA = 1e-3  # fixed seeds make each test deterministic; a low alpha keeps a correct sampler well clear
LOGITS = torch.tensor([2.0, 1.5, 1.2, 1.0, 0.5, 0.0, -0.3, -1.0, -1.5, -2.0, -3.0, -4.0])


# ---- chi-square ------------------------------------------------------------------------------------
def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for chi-square with ``dof`` degrees of freedom: Q(dof/2, x/2), by series or continued fraction."""
    try:
        from scipy.stats import chi2

        return float(chi2.sf(x, dof))
    except ImportError:
        pass
    a, z = dof / 2, x / 2
    if z <= 0:
        return 1.0
    log_front = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1:  # lower series: P(a, z) = front / a * sum z^n / ((a+1)...(a+n))
        term = total = 1 / a
        for n in range(1, 1000):
            term *= z / (a + n)
            total += term
        return 1 - math.exp(log_front) * total
    # Lentz's continued fraction for Q(a, z)
    b, c, d = z + 1 - a, 1e300, 1 / (z + 1 - a)
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = 1 / (an * d + b)
        c = b + an / c
        h *= d * c
    return math.exp(log_front) * h


def test_chi2_sf_matches_known_values():
    # textbook critical values: P(X > 16.919 | 9) = 0.05, P(X > 6.635 | 1) = 0.01, P(X > 29.588 | 10) = 0.001
    for x, dof, p in [(16.919, 9, 0.05), (6.635, 1, 0.01), (29.588, 10, 0.001), (3.357, 4, 0.5)]:
        assert abs(chi2_sf(x, dof) - p) < 2e-4 * max(1, p * 100)


def assert_follows(probs: torch.Tensor, expected: torch.Tensor, seed: int = 0) -> None:
    """20,000 draws from ``probs`` pass a chi-square test against ``expected``; zeros are never drawn."""
    g = torch.Generator().manual_seed(seed)
    draws = sample(probs[None].expand(DRAWS, -1).contiguous(), generator=g)
    counts = torch.bincount(draws, minlength=expected.numel()).double()
    kept = expected > 0
    assert counts[~kept].sum() == 0, "a filtered-out token was drawn"
    e = expected[kept].double() * DRAWS
    stat = float(((counts[kept] - e) ** 2 / e).sum())
    dof = int(kept.sum()) - 1
    assert dof == 0 or chi2_sf(stat, dof) > ALPHA, f"chi2={stat:.1f} with {dof} dof"


def exact(weights: list[float]) -> torch.Tensor:
    w = torch.tensor(weights, dtype=torch.float64)
    return w / w.sum()


def softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x.double() - x.max())
    return e / e.sum()


# ---- each warper is right in distribution -----------------------------------------------------------
@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_temperature_draws(t):
    expected = softmax(LOGITS / t)
    assert_follows(logits_to_probs(LOGITS[None], temperature=t)[0], expected)


def test_top_k_draws():
    p = softmax(LOGITS)
    expected = exact([float(v) if i < 4 else 0.0 for i, v in enumerate(p)])  # the 4 largest logits, renormalised
    assert_follows(logits_to_probs(LOGITS[None], top_k=4)[0], expected)


def test_top_p_draws():
    p = softmax(LOGITS)
    # smallest prefix of the sorted probabilities whose mass reaches 0.8
    n = next(i + 1 for i in range(len(p)) if float(p[: i + 1].sum()) >= 0.8)
    expected = exact([float(v) if i < n else 0.0 for i, v in enumerate(p)])
    assert 1 < n < len(p)
    assert_follows(logits_to_probs(LOGITS[None], top_p=0.8)[0], expected)


def test_min_p_draws():
    p = softmax(LOGITS)
    expected = exact([float(v) if v >= 0.2 * p.max() else 0.0 for v in p])
    assert 1 < int((expected > 0).sum()) < len(p)
    assert_follows(logits_to_probs(LOGITS[None], min_p=0.2)[0], expected)


def test_all_warpers_in_order_draws():
    """temperature -> top-k -> top-p -> min-p, each on the survivors of the one before."""
    t, k, top_p, min_p = 0.7, 6, 0.9, 0.1
    p = softmax(LOGITS / t)
    keep = [i < k for i in range(len(p))]
    q = exact([float(v) if keep[i] else 0.0 for i, v in enumerate(p)])
    n = next(i + 1 for i in range(len(q)) if float(q[: i + 1].sum()) >= top_p)
    q = exact([float(v) if i < n else 0.0 for i, v in enumerate(q)])
    q = exact([float(v) if v >= min_p * q.max() else 0.0 for v in q])
    assert_follows(logits_to_probs(LOGITS[None], t, k, top_p, min_p)[0], q)


def test_a_seed_reproduces_the_draws():
    probs = logits_to_probs(LOGITS[None].expand(100, -1), temperature=1.3)
    draw = lambda s: sample(probs, generator=torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(draw(5), draw(5)) and not torch.equal(draw(5), draw(6))


def test_temperature_zero_is_greedy():
    probs = logits_to_probs(LOGITS[None], temperature=0.0)
    assert probs[0, 0] == 1.0 and probs.sum() == 1.0


# ---- equal to transformers' processors ---------------------------------------------------------------
def hf_warp(scores, t=1.0, k=0, p=1.0, min_p=0.0):
    # the order of transformers' _get_logits_processor; each is added only when it is on
    procs = [(TemperatureLogitsWarper, t, t != 1.0), (TopKLogitsWarper, k, k > 0), (TopPLogitsWarper, p, p < 1.0),
             (MinPLogitsWarper, min_p, min_p > 0)]  # fmt: skip
    for proc, value, on in procs:
        if on:
            scores = proc(value)(None, scores)
    return scores.softmax(-1)


@pytest.mark.parametrize(
    "t, k, p, min_p",
    [(0.7, 0, 1.0, 0.0), (1.0, 10, 1.0, 0.0), (1.0, 0, 0.9, 0.0), (1.0, 0, 1.0, 0.05), (0.8, 20, 0.95, 0.02)],
)
def test_warpers_equal_transformers(t, k, p, min_p):
    scores = torch.randn(4, 200, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(logits_to_probs(scores, t, k, p, min_p), hf_warp(scores, t, k, p, min_p))


def test_repetition_penalty_and_min_new_tokens_equal_transformers():
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[1, 2, 2, 7], [3, 4, 5, 6], [0, 0, 9, 9]])
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, ids, True)
    hf = RepetitionPenaltyLogitsProcessor(1.4)(ids, scores.clone())
    assert torch.equal(apply_repetition_penalty(scores, seen, 1.4), hf)
    eos = torch.tensor([2, 5])
    hf = MinNewTokensLengthLogitsProcessor(4, 3, eos)(ids, scores.clone())  # 0 new tokens < 3: EOS masked
    assert torch.equal(suppress(scores, eos), hf)


@pytest.mark.parametrize("t", [2.856e-39, 1e-45, MIN_TEMPERATURE / 2])
def test_temperatures_below_the_floor_decode_greedily(t):
    """A tiny temperature overflowed the logits to inf and the draw to NaN (a probe's 2.856e-39)."""
    logits = torch.tensor([[3.0, 1.0, -2.0, 2.9], [-1.0, 0.5, 4.0, 0.0]])
    cfg = GenerationConfig(do_sample=True, temperature=t, top_k=0, top_p=1.0, seed=1)
    assert next_tokens(logits, cfg, torch.Generator().manual_seed(1)).tolist() == [0, 2]
    probs = logits_to_probs(logits, temperature=t)
    assert torch.isfinite(probs).all() and probs.argmax(-1).tolist() == [0, 2] and probs.max(-1).values.eq(1).all()


# ---- OpenAI's additive penalties and logit bias ---------------------------------------------------
def test_presence_and_frequency_penalties_follow_openais_formula():
    from llmkit.inference.sampling import apply_presence_frequency

    torch.manual_seed(0)
    scores = torch.randn(2, 6)
    counts = torch.tensor([[0, 1, 3, 0, 2, 0], [1, 0, 0, 0, 0, 5]])
    got = apply_presence_frequency(scores, counts, presence=0.7, frequency=0.3)
    for b in range(2):
        for j in range(6):
            c = int(counts[b, j])
            want = float(scores[b, j]) - c * 0.3 - (0.7 if c > 0 else 0.0)  # logits[j] -= c*f + (c>0)*p
            assert float(got[b, j]) == pytest.approx(want, abs=1e-6)


def test_logit_bias_is_a_dense_vector_and_ids_past_the_vocabulary_are_refused():
    from llmkit.errors import LlmkitError
    from llmkit.inference.sampling import bias_tensor

    assert bias_tensor({}, 6) is None
    assert bias_tensor({2: -100, 5: 1.5}, 6).tolist() == [0, 0, -100, 0, 0, 1.5]
    with pytest.raises(LlmkitError, match="outside the vocabulary"):
        bias_tensor({6: 1.0}, 6)


def test_generation_config_checks_the_new_fields():
    from llmkit.errors import LlmkitError

    assert GenerationConfig.from_dict({"logit_bias": {"5": -100}}).logit_bias == {5: -100}  # JSON keys are strings
    for bad in (
        {"presence_penalty": 2.5},
        {"frequency_penalty": -3},
        {"logit_bias": {5: 101}},
        {"logit_bias": {-1: 1}},
    ):
        with pytest.raises(LlmkitError):
            GenerationConfig(**bad)


def greedy_reference(model, ids, n, presence=0.0, frequency=0.0, bias=None) -> list[int]:
    """Greedy decoding written out: the whole sequence each step, bias added, OpenAI's penalties subtracted
    for the tokens generated so far."""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids + out])).logits[0, -1].float()
            for token, b in (bias or {}).items():
                logits[token] += b
            for token in set(out):
                logits[token] -= out.count(token) * frequency + presence
            out.append(int(logits.argmax()))
    return out


@pytest.mark.parametrize("presence, frequency, bias", [(1.5, 0.0, None), (0.0, 2.0, None), (0.5, 0.5, {7: 4.0})])
def test_generate_applies_penalties_and_bias_as_the_formula(tiny_checkpoint, presence, frequency, bias):
    from llmkit import checkpoint
    from llmkit.inference import generate

    model = checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=64))
    ids = model.tokenizer.encode("The cat")
    settings = dict(max_new_tokens=12, eos_token_id=[])  # no EOS: every row runs the full 12 steps
    plain = generate(model, "The cat", **settings)[0].token_ids
    got = generate(model, "The cat", presence_penalty=presence, frequency_penalty=frequency, logit_bias=bias or {},
                   **settings)[0].token_ids  # fmt: skip
    assert got == greedy_reference(model, ids, 12, presence, frequency, bias) and got != plain


def test_beam_search_refuses_openais_penalties(tiny_checkpoint):
    from llmkit import checkpoint
    from llmkit.errors import LlmkitError
    from llmkit.inference import generate

    model = checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=64))
    with pytest.raises(LlmkitError, match="num_beams=1"):
        generate(model, "The cat", max_new_tokens=4, num_beams=2, presence_penalty=1.0)
