"""Is the effect specific? Per-cell evidence for an induction against no intervention and against
random-neuron controls, paired over questions.

A cell is (trait, pole, gamma). For each question q we have the NPTI score s(q), the score with no
intervention b(q), and the scores under k random controls c_1(q)..c_k(q) (each matched to the pole's
neurons per layer in count and shift size, drawn with its own seed); the control of a question is
their mean. Per cell:

- the paired differences s - b and s - c: mean, 95% percentile bootstrap interval (questions
  resampled), and a two-sided paired permutation p (signs of the differences flipped at random);
- p-values adjusted across all cells of a table (Holm by default, or Benjamini-Hochberg);
- a verdict: `specific` when NPTI beats no intervention and the control (both adjusted p < alpha,
  both differences > 0) and its mean beats every single control draw; `wrong way` when it is below
  no intervention (adjusted p < alpha); else `not distinguishable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from npti_lens.errors import UserError

VERDICTS = ("specific", "wrong way", "not distinguishable")


def bootstrap_ci(
    diffs: Sequence[float] | np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean of `diffs` over `n_boot` resamples (with replacement)."""
    d = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


EXACT_UP_TO = 16  # nonzero differences up to which every sign pattern is enumerated (2^16)


def permutation_p(diffs: Sequence[float] | np.ndarray, *, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided paired permutation p of mean(diffs) = 0 under sign flips of the differences.

    Zero differences do not change under a flip, so only the m nonzero ones are flipped: exactly,
    over all 2^m patterns, when m <= 16; else `n_perm` random patterns, (1 + #as extreme) / (1 + n).
    """
    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    observed = abs(d.sum())
    if observed == 0.0:
        return 1.0
    tol = 1e-9 * max(1.0, observed)
    if len(d) <= EXACT_UP_TO:
        patterns = (np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1
        sums = np.abs(((1 - 2 * patterns) * d).sum(axis=1))
        return float((sums >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(n_perm, len(d)))
    extreme = np.abs((signs * d).sum(axis=1)) >= observed - tol
    return float((1 + extreme.sum()) / (1 + n_perm))


def holm(ps: Sequence[float] | np.ndarray) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(ps, dtype=float)
    order = np.argsort(p, kind="stable")
    adj = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def benjamini_hochberg(ps: Sequence[float] | np.ndarray) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order."""
    p = np.asarray(ps, dtype=float)
    n = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty_like(p)
    running = 1.0
    for rank in range(n - 1, -1, -1):
        i = order[rank]
        running = min(running, p[i] * n / (rank + 1))
        adj[i] = running
    return adj.tolist()


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


@dataclass
class Cell:
    trait: str
    pole: str
    gamma: float
    n: int
    none: float
    npti: float  # the score under the method (NPTI's neurons, or the vector)
    control: float  # mean over questions of the mean over the control draws
    control_min: float  # the lowest and highest single draw's mean
    control_max: float
    k: int  # control draws
    diff_none: float
    ci_none_low: float
    ci_none_high: float
    p_none: float
    diff_control: float
    ci_control_low: float
    ci_control_high: float
    p_control: float
    q_none: float = float("nan")  # adjusted across the table's cells
    q_control: float = float("nan")
    verdict: str = ""
    method: str = "npti"  # what was induced: npti (neurons) or vector (a residual direction)
    fluency: float = float("nan")  # mean fluency under the method, where the judge gives one


def cell(
    trait: str,
    pole: str,
    gamma: float,
    npti: Sequence[float] | np.ndarray,
    none: Sequence[float] | np.ndarray,
    controls: Sequence[Sequence[float]] | np.ndarray,
    *,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
    method: str = "npti",
    fluency: float = float("nan"),
) -> Cell:
    """The evidence of one cell from per-question scores (controls: one list per draw)."""
    s, b = np.asarray(npti, dtype=float), np.asarray(none, dtype=float)
    c_draws = np.asarray(controls, dtype=float).reshape(len(controls), -1)
    if not len(s) or s.shape != b.shape or c_draws.shape[1] != len(s) or not len(controls):
        raise UserError(
            f"{trait} {pole} gamma {gamma:g}: scores of NPTI, none and every control need the same questions"
        )
    c = c_draws.mean(axis=0)
    d_none, d_control = s - b, s - c
    ci_n, ci_c = (
        bootstrap_ci(d_none, n_boot=n_boot, seed=seed),
        bootstrap_ci(d_control, n_boot=n_boot, seed=seed),
    )
    draw_means = c_draws.mean(axis=1)
    return Cell(
        trait, pole, float(gamma), len(s), float(b.mean()), float(s.mean()), float(c.mean()),
        float(draw_means.min()), float(draw_means.max()), len(controls),
        float(d_none.mean()), *ci_n, permutation_p(d_none, n_perm=n_perm, seed=seed),
        float(d_control.mean()), *ci_c, permutation_p(d_control, n_perm=n_perm, seed=seed), method=method, fluency=fluency,
    )  # fmt: skip


def judge_cells(cells: list[Cell], *, alpha: float = 0.05, correction: str = "holm") -> list[Cell]:
    """Adjust the p-values across `cells` (both comparisons, one family) and give each its verdict."""
    if correction not in CORRECTIONS:
        raise UserError(
            f"unknown correction {correction!r}; choose {', '.join(CORRECTIONS)}", field="correction"
        )
    adjusted = CORRECTIONS[correction]([x.p_none for x in cells] + [x.p_control for x in cells])
    for i, x in enumerate(cells):
        x.q_none, x.q_control = adjusted[i], adjusted[len(cells) + i]
        if x.q_none < alpha and x.diff_none < 0:
            x.verdict = "wrong way"
        elif (
            x.q_none < alpha and x.diff_none > 0 and x.q_control < alpha and x.diff_control > 0
            and x.npti > x.control_max
        ):  # fmt: skip
            x.verdict = "specific"
        else:
            x.verdict = "not distinguishable"
    return cells


def to_rows(cells: list[Cell]) -> list[dict]:
    return [asdict(x) for x in cells]
