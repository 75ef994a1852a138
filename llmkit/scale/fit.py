"""Scaling laws fitted to (N, D, loss) points as Hoffmann et al. (2022, "Chinchilla") fit theirs.

- Approach 2 (their sec. 3.2): per FLOP budget C, a parabola of the loss in ln N through the IsoFLOP
  points; its vertex is the compute-optimal N*(C) (D*(C) read off the same curve). Across budgets,
  N* ~ C^a and D* ~ C^b by least squares on the logarithms.
- Approach 3 (their sec. 3.3 and app. D.2, as Besiroglu et al. 2024 replicate it): L(N, D) = E + A / N^alpha
  + B / D^beta, fitted by minimising the Huber loss (delta 1e-3) of ln L_hat - ln L over the points,
  with L_hat written as LSE(a - alpha ln N, b - beta ln D, e) (A = e^a, B = e^b, E = e^e), by L-BFGS from a
  grid of starting points (alpha, beta in 0..2 step 0.5, e in -1..1 step 0.5, a, b in 0..25 step 5).
  Confidence intervals come from the bootstrap: resample the points with replacement, refit, take
  percentiles.

numpy and scipy only: no torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from llmkit.errors import LlmkitError

HUBER_DELTA = 1e-3
# Hoffmann et al. (2022), app. D.2: the grid of initialisations, in (a, b, e, alpha, beta) order
START_GRID = {
    "a": np.arange(0.0, 30.0, 5.0),
    "b": np.arange(0.0, 30.0, 5.0),
    "e": np.arange(-1.0, 1.5, 0.5),
    "alpha": np.arange(0.0, 2.5, 0.5),
    "beta": np.arange(0.0, 2.5, 0.5),
}
# L-BFGS-B's box: wide around every published fit (Chinchilla: ln A 6.0, ln B 6.0, E 1.69, alpha 0.34,
# beta 0.28), so it never binds on a law the points determine, and small enough that exp() of the
# result stays finite: points a law fits badly (losses that rise with N at every budget, say) sent
# an unbounded run to ln A ~ 1e3, where exp overflowed and the fit raised instead of reporting.
BOUNDS = [(-50.0, 200.0), (-50.0, 200.0), (-10.0, 10.0), (0.0, 10.0), (0.0, 10.0)]  # (a, b, e, alpha, beta)
# L-BFGS runs from this many of the grid's starts, the ones with the lowest objective there. Runs from
# the others land in the same minimum or a worse one: on 72 synthetic points of Chinchilla's law
# (budgets 6e18-3e21, 0.2% noise) the best of all 4,500 runs (90 s here) equalled the best of the
# first 100 to 9 digits; on 9 sets (synthetic at 0.2% and 2% noise, three tiny real sweeps) the best of
# the first 200 was first reached by start 0, 1 or 2, and 45-168 of the 200 reached it. 32 starts
# take ~1 s (~20 ms per run).
LBFGS_STARTS = 32
BOOTSTRAP_STARTS = 4  # a resample's refit: from the full fit's optimum and its own best grid points
MIN_POINTS_LAW = 5  # five parameters


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, params: float | np.ndarray, tokens: float | np.ndarray) -> float | np.ndarray:
        with np.errstate(over="ignore"):  # a degenerate refit's huge exponent: inf, not a warning
            return self.E + self.A / np.power(params, self.alpha) + self.B / np.power(tokens, self.beta)

    @property
    def a(self) -> float:
        """N_opt ~ C^a with a = beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ~ C^b with b = alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def degenerate(self) -> bool:
        """A term vanished (A or B 0, an exponent <= 0): the law has no compute-optimal trade-off."""
        return min(self.A, self.B, self.alpha, self.beta) <= 0 or not math.isfinite(self.A * self.B)

    def optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L under C = 6ND, in closed form (Hoffmann et al. eq. 4):
        N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, G = (alpha A / (beta B))^(1 / (alpha + beta));
        (nan, nan) for a degenerate law."""
        if self.degenerate:
            return math.nan, math.nan
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        return g * (flops / 6.0) ** self.a, (flops / 6.0) ** self.b / g

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_theta(cls, theta: Sequence[float]) -> Law:
        a, b, e, alpha, beta = (float(v) for v in theta)
        return cls(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


# ---- approach 3 -----------------------------------------------------------------------------
def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float):
    """Sum of Huber(LSE(a - alpha ln N, b - beta ln D, e) - ln L) and its gradient in theta."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, points)
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    residual = top + np.log(total) - log_l
    weights /= total  # d LSE / d term
    small = np.abs(residual) <= delta
    value = np.where(small, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta)).sum()
    slope = np.where(small, residual, delta * np.sign(residual))  # Huber'
    grad = np.array(
        [
            (slope * weights[0]).sum(),
            (slope * weights[1]).sum(),
            (slope * weights[2]).sum(),
            -(slope * weights[0] * log_n).sum(),
            -(slope * weights[1] * log_d).sum(),
        ]
    )
    return value, grad


def _grid_objectives(grid: np.ndarray, log_n, log_d, log_l, delta: float) -> np.ndarray:
    """The objective at every start of ``grid`` (starts, 5) at once."""
    a, b, e, alpha, beta = (grid[:, i : i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(grid), len(log_n)))])
    residual = np.logaddexp.reduce(terms, axis=0) - log_l
    huber = np.where(np.abs(residual) <= delta, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta))
    return huber.sum(axis=1)


def start_grid() -> np.ndarray:
    """Every combination of START_GRID's values, (4500, 5) in (a, b, e, alpha, beta) order."""
    return np.array(list(itertools.product(*START_GRID.values())))


def _lbfgs(theta0: np.ndarray, args: tuple) -> tuple[float, np.ndarray]:
    from scipy.optimize import minimize

    # Tight tolerances: with delta 1e-3 the objective and its gradient are small numbers, and scipy's
    # defaults (gtol 1e-5) stop before the minimum (Besiroglu et al. 2024 traced part of the gap to
    # Hoffmann et al.'s published values to an optimiser stopping early).
    result = minimize(
        _objective, theta0, args=args, jac=True, method="L-BFGS-B", bounds=BOUNDS,
        options={"maxiter": 1000, "gtol": 1e-12, "ftol": 1e-15},
    )  # fmt: skip
    return float(result.fun), result.x


def fit_law(
    params: Sequence[float],
    tokens: Sequence[float],
    losses: Sequence[float],
    *,
    delta: float = HUBER_DELTA,
    starts: int = LBFGS_STARTS,
    extra_starts: Sequence[Sequence[float]] = (),
) -> Law:
    """Approach 3: fit L(N, D) to the points. Order: the objective at each of the 4,500 grid starts ->
    L-BFGS from the ``starts`` best of them (and from ``extra_starts``, thetas in (a, b, e, alpha, beta)
    order) -> the run that ends lowest. Raises LlmkitError for fewer than 5 points."""
    log_n, log_d, log_l = (np.log(np.asarray(v, dtype=float)) for v in (params, tokens, losses))
    if len(log_n) < MIN_POINTS_LAW:
        raise LlmkitError(
            f"approach 3 fits 5 parameters and needs at least {MIN_POINTS_LAW} points, got {len(log_n)}",
            "run more points of the sweep",
        )
    args = (log_n, log_d, log_l, delta)
    grid = start_grid()
    order = np.argsort(_grid_objectives(grid, *args), kind="stable")[:starts]
    best_value, best_theta = math.inf, None
    for theta0 in list(grid[order]) + [np.asarray(t, dtype=float) for t in extra_starts]:
        value, theta = _lbfgs(theta0, args)
        if value < best_value and np.all(np.isfinite(theta)):
            best_value, best_theta = value, theta
    return Law.from_theta(best_theta)


def law_theta(law: Law) -> np.ndarray:
    """The fit's parameters as L-BFGS sees them: (ln A, ln B, ln E, alpha, beta)."""
    tiny = 1e-300  # exp(a) of a fit that drove a term away underflows to 0
    return np.array(
        [math.log(max(law.A, tiny)), math.log(max(law.B, tiny)), math.log(max(law.E, tiny)), law.alpha, law.beta]
    )


def bootstrap_laws(
    params: Sequence[float],
    tokens: Sequence[float],
    losses: Sequence[float],
    fitted: Law,
    *,
    resamples: int = 100,
    seed: int = 0,
    progress=None,
) -> list[Law]:
    """Refits of ``resamples`` bootstrap resamples of the points (drawn with replacement, as many as
    there are, from numpy's generator seeded by ``seed``), each by L-BFGS from ``fitted`` and its own
    best grid starts. ``progress``: a callable given the count done after each refit."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (params, tokens, losses))
    rng = np.random.default_rng(seed)
    laws = []
    for done in range(resamples):
        pick = rng.integers(0, len(n), len(n))
        laws.append(fit_law(n[pick], d[pick], loss[pick], starts=BOOTSTRAP_STARTS, extra_starts=[law_theta(fitted)]))
        if progress is not None:
            progress(done + 1)
    return laws


def interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``values`` (bootstrap percentile method); nan values
    (figures a degenerate refit does not have) are left out."""
    tail = 100.0 * (1.0 - level) / 2.0
    values = np.asarray(values, dtype=float)
    if np.isnan(values).all():
        return math.nan, math.nan
    low, high = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


# ---- approach 2 -----------------------------------------------------------------------------
@dataclass
class IsoFlop:
    """One budget's IsoFLOP curve: its points (sorted by N), the parabola in ln N and its vertex."""

    budget: float
    params: np.ndarray
    tokens: np.ndarray
    losses: np.ndarray
    coeffs: np.ndarray  # loss = c2 x^2 + c1 x + c0, x = ln N
    n_opt: float
    d_opt: float
    loss_opt: float

    @property
    def inside(self) -> bool:
        """The vertex lies within the sizes trained (else it is an extrapolation)."""
        return bool(self.params.min() <= self.n_opt <= self.params.max())


@dataclass
class PowerLaw:
    """y = coefficient * x^exponent, fitted by least squares on ln y against ln x."""

    exponent: float
    coefficient: float

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.coefficient * np.power(x, self.exponent)


def power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    slope, intercept = np.polyfit(np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float)), 1)
    return PowerLaw(float(slope), float(math.exp(intercept)))


def isoflop_curve(budget: float, params, tokens, losses) -> IsoFlop | None:
    """The parabola through one budget's points and its vertex; None when the points cannot define one
    (fewer than 3 sizes, or a curve without a minimum: the loss falls or rises across the whole range).
    D* comes from the same budget's points: ln D is fitted as a line in ln N (D = C / FLOPs per token,
    nearly D ~ 1/N) and read at N*."""
    order = np.argsort(params)
    n, d, loss = (np.asarray(v, dtype=float)[order] for v in (params, tokens, losses))
    if len(np.unique(n)) < 3:
        return None
    x = np.log(n)
    coeffs = np.polyfit(x, loss, 2)
    if coeffs[0] <= 0:
        return None
    x_opt = -coeffs[1] / (2.0 * coeffs[0])
    slope, intercept = np.polyfit(x, np.log(d), 1)
    n_opt = math.exp(x_opt)
    d_opt = math.exp(intercept + slope * x_opt)
    return IsoFlop(budget, n, d, loss, coeffs, n_opt, d_opt, float(np.polyval(coeffs, x_opt)))


@dataclass
class Approach2:
    """The IsoFLOP curves and, with two budgets or more, N* ~ C^a and D* ~ C^b."""

    curves: list[IsoFlop]
    skipped: list[tuple[float, str]]  # (budget, why)
    n_law: PowerLaw | None
    d_law: PowerLaw | None


def approach2(budgets: Sequence[float], params, tokens, losses) -> Approach2:
    """Fit each budget's IsoFLOP parabola, then the power laws across the budgets that have a minimum."""
    budgets, params, tokens, losses = (np.asarray(v, dtype=float) for v in (budgets, params, tokens, losses))
    curves, skipped = [], []
    for budget in sorted(set(budgets.tolist())):
        mine = budgets == budget
        curve = isoflop_curve(budget, params[mine], tokens[mine], losses[mine])
        if curve is not None:
            curves.append(curve)
        elif len(np.unique(params[mine])) < 3:
            skipped.append((budget, f"{int(mine.sum())} size(s): a parabola needs 3"))
        else:
            skipped.append((budget, "the loss has no minimum across the sizes (the parabola opens downward)"))
    if len(curves) < 2:
        return Approach2(curves, skipped, None, None)
    c = [curve.budget for curve in curves]
    n_law = power_law(c, [curve.n_opt for curve in curves])
    d_law = power_law(c, [curve.d_opt for curve in curves])
    return Approach2(curves, skipped, n_law, d_law)
