"""Training FLOPs, petaFLOP/s-days and GPU-days, and compute-optimal sizes (Chinchilla)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmkit.config import ModelConfig
from llmkit.plan.parameters import ModelSize, stacks

PF_DAY = 1e15 * 86400  # one petaFLOP/s for a day
# Dense peak FLOP/s of the tensor cores in 16 bits, per GPU (vendor data sheets; H100/H200 SXM)
GPU_PEAK_FLOPS = {"V100": 125e12, "A100": 312e12, "H100": 989e12, "H200": 989e12}


def attention_layers(cfg: ModelConfig) -> int:
    """Layers that run attention over a sequence; T5's decoder runs it twice (self and cross)."""
    return sum(layers * (2 if cross else 1) for layers, cross in stacks(cfg))


def flops_per_token(model: ModelSize, seq: int) -> tuple[float, float]:
    """Training FLOPs per token: (6N, 6N + 12 x attention layers x (heads x head dim) x seq).

    6N: forward 2 and backward 4 per weight of every matrix multiply (Kaplan et al. 2020, sec. 2.1).
    The attention term is PaLM's (Chowdhery et al. 2022, app. B): Q K^T and the weighted sum of V, 2
    FLOPs per multiply-add each, times 3 for backward, over every key (no discount for the causal
    mask). Kaplan's table 1 counts 2 x layers x seq x d per forward (6 per step), one of the two
    products; PaLM's count is the one MFU is usually quoted with, and llmkit's trainer uses it.
    """
    cfg = model.cfg
    six_n = 6.0 * model.matmul_parameters
    return six_n, six_n + 12.0 * attention_layers(cfg) * cfg.n_head * cfg.head_dim * seq


def training_days(flops: float, peak_flops: float, gpus: int, mfu: float) -> float:
    """Wall-clock days: flops / (gpus x peak x MFU), MFU the share of the peak the run achieves."""
    return flops / (gpus * peak_flops * mfu) / 86400


# Chinchilla (Hoffmann et al. 2022, sec. 3.3, approach 3): L(N, D) = E + A / N^alpha + B / D^beta
CHINCHILLA_FIT = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
CHINCHILLA_SOURCE = "Chinchilla fit (approach 3)"
TOKENS_PER_PARAMETER = 20  # Chinchilla's rule of thumb: D = 20 N at the optimum


def chinchilla_loss(n: float, d: float, law: dict[str, float] | None = None) -> float:
    """The parametric fit's predicted loss for ``n`` parameters trained on ``d`` tokens: Chinchilla's
    published one, or ``law`` (the same five keys, e.g. fitted by `llmkit scale fit`)."""
    f = law or CHINCHILLA_FIT
    return f["E"] + f["A"] / n ** f["alpha"] + f["B"] / d ** f["beta"]


def optimal_by_tokens_rule(flops: float, tokens_per_parameter: float = TOKENS_PER_PARAMETER) -> tuple[float, float]:
    """(N, D) with C = 6ND and D = 20N: N = sqrt(C / 120)."""
    n = math.sqrt(flops / (6 * tokens_per_parameter))
    return n, tokens_per_parameter * n


def optimal_by_parametric_fit(flops: float, law: dict[str, float] | None = None) -> tuple[float, float]:
    """(N, D) minimising the fitted L(N, D) (Chinchilla's, or ``law``) under C = 6ND, in closed form
    (Hoffmann et al. eq. 4): N = G (C/6)^(beta/(alpha+beta)), D = C / (6N),
    G = (alpha A / (beta B))^(1/(alpha+beta))."""
    f = law or CHINCHILLA_FIT
    s = f["alpha"] + f["beta"]
    g = (f["alpha"] * f["A"] / (f["beta"] * f["B"])) ** (1 / s)
    n = g * (flops / 6) ** (f["beta"] / s)
    return n, flops / (6 * n)


@dataclass
class Compute:
    """FLOPs of training on ``tokens`` tokens, petaFLOP/s-days, and days per GPU type."""

    tokens: float
    tokens_from_rule: bool  # no token budget given: 20 per parameter
    flops_per_token_6n: float
    flops_per_token: float
    mfu: float
    gpus: int

    @property
    def flops_6nd(self) -> float:
        return self.flops_per_token_6n * self.tokens

    @property
    def flops(self) -> float:
        return self.flops_per_token * self.tokens

    @property
    def pf_days(self) -> float:
        return self.flops / PF_DAY

    @property
    def pf_days_6nd(self) -> float:
        return self.flops_6nd / PF_DAY

    @property
    def days(self) -> dict[str, float]:
        return {gpu: training_days(self.flops, peak, self.gpus, self.mfu) for gpu, peak in GPU_PEAK_FLOPS.items()}


def compute(model: ModelSize, seq: int, tokens: float | None, mfu: float = 0.4, gpus: int = 1) -> Compute:
    six_n, full = flops_per_token(model, seq)
    budget = tokens if tokens is not None else TOKENS_PER_PARAMETER * model.parameters
    return Compute(budget, tokens is None, six_n, full, mfu, gpus)


@dataclass
class Optimum:
    """Compute-optimal parameters and tokens for a FLOP budget, by both rules, with the law's losses."""

    flops: float
    rule_parameters: float
    rule_tokens: float
    fit_parameters: float
    fit_tokens: float
    law: dict[str, float] = field(default_factory=lambda: dict(CHINCHILLA_FIT))
    law_source: str = CHINCHILLA_SOURCE  # which L(N, D): Chinchilla's published one or a fitted one

    @property
    def rule_loss(self) -> float:
        return chinchilla_loss(self.rule_parameters, self.rule_tokens, self.law)

    @property
    def fit_loss(self) -> float:
        return chinchilla_loss(self.fit_parameters, self.fit_tokens, self.law)


def optimum(flops: float, law: dict[str, float] | None = None, law_source: str | None = None) -> Optimum:
    """The optimum for ``flops`` by 20 tokens per parameter and by a parametric law: Chinchilla's
    published fit, or ``law`` (E, A, B, alpha, beta) named ``law_source``."""
    fitted = optimal_by_parametric_fit(flops, law)
    chosen = dict(law or CHINCHILLA_FIT)
    return Optimum(flops, *optimal_by_tokens_rule(flops), *fitted, chosen, law_source or CHINCHILLA_SOURCE)
