"""`llmkit scale fit`'s report: both approaches on a results file, the compute-optimal model for a
budget, predicted losses with bootstrap intervals, the published values beside them; text or JSON."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmkit.errors import LlmkitError
from llmkit.plan.compute import CHINCHILLA_FIT, TOKENS_PER_PARAMETER
from llmkit.plan.report import sci
from llmkit.scale.fit import MIN_POINTS_LAW, Approach2, Law, approach2, bootstrap_laws, fit_law, interval
from llmkit.scale.results import Result
from llmkit.units import human_count

# Hoffmann et al. (2022), table 2: N_opt ~ C^a, D_opt ~ C^b by approach; Kaplan et al. (2020) for contrast
PUBLISHED_EXPONENTS = {
    "Chinchilla approach 1": (0.50, 0.50),
    "Chinchilla approach 2": (0.49, 0.51),
    "Chinchilla approach 3": (0.46, 0.54),
    "Kaplan et al. 2020": (0.73, 0.27),
}
LAW_NAMES = ("E", "A", "B", "alpha", "beta")
LEVEL = 0.95


@dataclass
class ScalingFit:
    """Everything `llmkit scale fit` prints."""

    source: str
    results: list[Result]
    approach2: Approach2
    law: Law
    laws: list[Law]  # bootstrap refits (empty: no intervals)
    budgets: list[float]  # where the compute-optimal model is reported
    predict: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # ---- derived figures, each (value, (low, high) or None) ----
    def _ci(self, of: Callable[[Law], float]) -> tuple[float, tuple[float, float] | None]:
        value = of(self.law)
        return value, (interval([of(law) for law in self.laws], LEVEL) if self.laws else None)

    def law_figures(self) -> dict[str, tuple[float, tuple[float, float] | None]]:
        out = {name: self._ci(lambda law, n=name: getattr(law, n)) for name in LAW_NAMES}
        out["a"] = self._ci(lambda law: law.a)
        out["b"] = self._ci(lambda law: law.b)
        return out

    def optimal3(self, flops: float) -> dict[str, tuple[float, tuple[float, float] | None]]:
        """Approach 3's compute-optimal N, D, D/N and the loss there, for ``flops`` (C = 6ND)."""
        return {
            "params": self._ci(lambda law: law.optimal(flops)[0]),
            "tokens": self._ci(lambda law: law.optimal(flops)[1]),
            "tokens_per_param": self._ci(lambda law: law.optimal(flops)[1] / law.optimal(flops)[0]),
            "loss": self._ci(lambda law: float(law.loss(*law.optimal(flops)))),
        }

    def optimal2(self, flops: float) -> dict[str, float] | None:
        """Approach 2's N*(C), D*(C) from the fitted power laws (None with fewer than 2 usable budgets)."""
        a2 = self.approach2
        if a2.n_law is None:
            return None
        n, d = float(a2.n_law(flops)), float(a2.d_law(flops))
        return {"params": n, "tokens": d, "tokens_per_param": d / n}

    def predicted(self, params: float, tokens: float) -> tuple[float, tuple[float, float] | None]:
        return self._ci(lambda law: float(law.loss(params, tokens)))

    # ---- output ----
    def to_dict(self) -> dict[str, Any]:
        def ci(pair):
            value, bounds = pair
            return {"value": value, "interval": list(bounds) if bounds else None}

        a2 = self.approach2
        return {
            "results": self.source,
            "points": len(self.results),
            "interval_level": LEVEL if self.laws else None,
            "bootstrap_resamples": len(self.laws),
            "approach2": {
                "curves": [
                    {
                        "budget": c.budget,
                        "points": len(c.params),
                        "params_opt": c.n_opt,
                        "tokens_opt": c.d_opt,
                        "loss_opt": c.loss_opt,
                        "inside_sampled_sizes": c.inside,
                        "parabola_ln_n": c.coeffs.tolist(),
                    }
                    for c in a2.curves
                ],  # fmt: skip
                "skipped": [{"budget": b, "why": why} for b, why in a2.skipped],
                "a": a2.n_law.exponent if a2.n_law else None,
                "b": a2.d_law.exponent if a2.d_law else None,
                "params_coefficient": a2.n_law.coefficient if a2.n_law else None,
                "tokens_coefficient": a2.d_law.coefficient if a2.d_law else None,
            },
            "approach3": {name: ci(pair) for name, pair in self.law_figures().items()},
            "compute_optimal": [
                {
                    "flops": c,
                    "approach3": {k: ci(v) for k, v in self.optimal3(c).items()},
                    "approach2": self.optimal2(c),
                }
                for c in self.budgets
            ],
            "predictions": [{"params": n, "tokens": d, "loss": ci(self.predicted(n, d))} for n, d in self.predict],
            "published": {"chinchilla_approach3": CHINCHILLA_FIT, "exponents": PUBLISHED_EXPONENTS},
            "notes": self.notes,
        }


def fit_results(
    results: Sequence[Result],
    source: str,
    *,
    budgets: Sequence[float] = (),
    predict: Sequence[tuple[float, float]] = (),
    bootstrap: int = 100,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> ScalingFit:
    """Both approaches on ``results``. Order: approach 2 per budget -> approach 3 on every point ->
    ``bootstrap`` refits of resampled points (0: none) -> the report for ``budgets`` (default: the
    sweep's own) and the (N, D) pairs of ``predict``."""
    if len(results) < MIN_POINTS_LAW:
        raise LlmkitError(
            f"{source}: {len(results)} point(s); a fit needs at least {MIN_POINTS_LAW}",
            "let the sweep finish more points (3 budgets x 5 sizes is a good start)",
        )
    params, tokens, budget, losses, spent = (
        np.array([getattr(r, key) for r in results]) for key in ("params", "tokens", "budget", "val_loss", "flops")
    )
    a2 = approach2(budget, params, tokens, losses)
    notes = [f"approach 2 left out budget {sci(b)}: {why}" for b, why in a2.skipped]
    notes += [
        f"approach 2: the minimum of budget {sci(c.budget)} (N* {human_count(c.n_opt)}) lies outside the sizes "
        "trained: add sizes on that side" for c in a2.curves if not c.inside
    ]  # fmt: skip
    if a2.n_law is None:
        notes.append("approach 2 needs minima at 2 budgets or more for N* ~ C^a; add budgets or sizes")
    law = fit_law(params, tokens, losses)
    laws = bootstrap_laws(params, tokens, losses, law, resamples=bootstrap, seed=seed, progress=progress)
    if law.degenerate:
        notes.append(
            f"approach 3's fit lost a term (A {law.A:.3g}, B {law.B:.3g}, alpha {law.alpha:.3g}, beta {law.beta:.3g}): "
            "the points do not pin down both N and D; add budgets and sizes"
        )
    lost = sum(refit.degenerate for refit in laws)
    if lost:
        notes.append(
            f"{lost} of {len(laws)} bootstrap refits lost a term; the intervals of N_opt and D_opt leave them out"
        )
    gap = float(np.max(np.abs(spent / budget - 1)))
    if gap > 0.05:
        notes.append(f"points trained up to {gap:.0%} off their budget (whole steps): approach 2 groups them by budget")
    return ScalingFit(source, list(results), a2, law, laws, list(budgets) or sorted(set(budget.tolist())),
                      list(predict), notes)  # fmt: skip


# ---- text -----------------------------------------------------------------------------------
def render(fit: ScalingFit) -> str:
    """The report as text: inputs, approach 2, approach 3 beside Chinchilla's values, the optimum per
    budget from both, predictions, notes."""
    r = fit.results
    n, d, c = ([getattr(p, key) for p in r] for key in ("params", "tokens", "budget"))
    lines = [
        f"{fit.source}: {len(r)} points, {len(set(c))} budgets ({sci(min(c))} to {sci(max(c))} FLOPs), "
        f"N {human_count(min(n))} to {human_count(max(n))}, D {human_count(min(d))} to {human_count(max(d))}",
        "",
        "approach 2 (a parabola in ln N per budget; its minimum N*):",
        f"  {'budget':>10}{'points':>8}{'N*':>9}{'D*':>9}{'D*/N*':>8}{'loss':>8}",
    ]
    for c in fit.approach2.curves:
        lines.append(
            f"  {sci(c.budget):>10}{len(c.params):>8}{human_count(c.n_opt):>9}{human_count(c.d_opt):>9}"
            f"{c.d_opt / c.n_opt:>8.1f}{c.loss_opt:>8.4f}" + ("" if c.inside else "  (outside the sizes)")
        )
    a2 = fit.approach2
    ref_a, ref_b = PUBLISHED_EXPONENTS["Chinchilla approach 2"]
    if a2.n_law is not None:
        lines.append(
            f"  N* ~ C^a: a = {a2.n_law.exponent:.3f}; D* ~ C^b: b = {a2.d_law.exponent:.3f} "
            f"(Chinchilla's approach 2: a = {ref_a:.2f}, b = {ref_b:.2f}; Kaplan et al. 2020: 0.73, 0.27)"
        )
    level = f"{LEVEL:.0%} bootstrap interval, {len(fit.laws)} resamples" if fit.laws else "no bootstrap"
    lines += [
        "",
        "approach 3 (L = E + A/N^alpha + B/D^beta; Huber loss, delta 1e-3, on ln L; L-BFGS from a grid of starts):",
        f"  {'':<7}{'fitted':>10}  {level:<40}{'Chinchilla':>10}",
    ]
    published = {**CHINCHILLA_FIT, "a": PUBLISHED_EXPONENTS["Chinchilla approach 3"][0],
                 "b": PUBLISHED_EXPONENTS["Chinchilla approach 3"][1]}  # fmt: skip
    for name, (value, bounds) in fit.law_figures().items():
        shown = f"[{_num(bounds[0])}, {_num(bounds[1])}]" if bounds else ""
        lines.append(f"  {name:<7}{_num(value):>10}  {shown:<40}{_num(published[name]):>10}")
    lines += ["", "compute-optimal (approach 3: closed form under C = 6ND; approach 2: its power laws):"]
    for flops in fit.budgets:
        o3 = fit.optimal3(flops)
        if fit.law.degenerate:
            lines.append(f"  {sci(flops)} FLOPs: approach 3 has no optimum (its fit lost a term; see the notes)")
        else:
            lines.append(
                f"  {sci(flops)} FLOPs: approach 3 N {_count_ci(o3['params'])}, D {_count_ci(o3['tokens'])}, "
                f"{_ratio_ci(o3['tokens_per_param'])} tokens per parameter (Chinchilla {TOKENS_PER_PARAMETER}), "
                f"loss {o3['loss'][0]:.4f}"
            )
        o2 = fit.optimal2(flops)
        if o2 is not None:
            lines.append(
                f"  {'':>{len(f'{sci(flops)}')}}        approach 2 N {human_count(o2['params'])}, "
                f"D {human_count(o2['tokens'])}, {o2['tokens_per_param']:.1f} tokens per parameter"
            )
    if fit.predict:
        lines += ["", "predicted loss (approach 3):"]
        for n, d in fit.predict:
            value, bounds = fit.predicted(n, d)
            shown = f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else ""
            lines.append(f"  N {human_count(n)}, D {human_count(d)}: {value:.4f}{shown}")
    if fit.notes:
        lines += [""] + [f"note: {note}" for note in fit.notes]
    return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def _count(value: float) -> str:
    return human_count(value) if 1 <= value < 1e15 else sci(value)  # a runaway refit: no 1481510941933T


def _ratio(value: float) -> str:
    return f"{value:.1f}" if value < 1e5 else sci(value)


def _count_ci(pair) -> str:
    value, bounds = pair
    return _count(value) + (f" [{_count(bounds[0])}, {_count(bounds[1])}]" if bounds else "")


def _ratio_ci(pair) -> str:
    value, bounds = pair
    return _ratio(value) + (f" [{_ratio(bounds[0])}, {_ratio(bounds[1])}]" if bounds else "")
