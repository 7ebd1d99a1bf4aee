"""Is the effect specific? Per-cell evidence for an induction against no intervention and against
random-neuron controls, paired over questions.

A cell is (trait, pole, gamma). For each question q we have the NPTI score s(q), the score with no
intervention b(q), and the scores under k random controls c_1(q)..c_k(q) (each matched to the pole's
neurons per layer in count and shift size, drawn with its own seed); the control of a question is
their mean. Per cell:

- the paired differences s - b and s - c: mean, 95% percentile bootstrap interval (questions
  resampled), and a two-sided paired permutation p (signs of the differences flipped at random);
- p-values adjusted across all cells of a table (Holm by default, or Benjamini-Hochberg);
- a verdict: `judge blind` when the judge missed its positive control for the cell's pole
  (`npti_lens.evaluation.control`: the P2 prompt did not move its score toward the pole on the same held-out
  questions; such cells make no claim and stay out of the adjustment); else `specific` when NPTI
  beats no intervention and the control (both adjusted p < alpha, both differences > 0) and its
  mean beats every single control draw; `wrong way` when it is below no intervention (adjusted
  p < alpha); else `not distinguishable`;
- the instrument's reach: the minimum detectable effect of each comparison (the mean paired
  difference a two-sided paired t-test at alpha 0.05 finds with 80% power, for the cell's n and the
  observed spread of its differences), and, where the P2 prompt was answered on the same questions,
  NPTI's effect as a share of P2's (mean(NPTI - none) / mean(P2 - none), bootstrap interval over
  questions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from npti_lens.core.errors import UserError

VERDICTS = ("specific", "wrong way", "not distinguishable", "judge blind")
POWER = 0.8  # of the minimum detectable effect
ALPHA = 0.05


def resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """`n_boot` bootstrap resamples of `n` question indices (rows), the draws every interval here uses."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def mean_ci(
    diffs: Sequence[float] | np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean of `diffs` over `n_boot` resamples (with replacement)."""
    d = np.asarray(diffs, dtype=float)
    means = d[resamples(len(d), n_boot, seed)].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def paired_t_power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided paired t-test at `alpha` against a true mean difference `delta`: the
    noncentral t's two tails (where scipy's noncentral t fails, at large noncentrality and few
    questions, the same tails as an integral over the chi-square of the variance)."""
    from scipy import integrate, stats

    df, nc = n - 1, delta * np.sqrt(n) / sd
    crit = stats.t.ppf(1 - alpha / 2, df)
    fast = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    if np.isfinite(fast):
        return float(fast)

    def tails(v: float) -> float:
        s = crit * np.sqrt(v / df)
        return float((stats.norm.cdf(nc - s) + stats.norm.cdf(-nc - s)) * stats.chi2.pdf(v, df))

    return float(integrate.quad(tails, 0, np.inf, limit=200)[0])


def min_detectable_effect(
    diffs: Sequence[float] | np.ndarray, *, alpha: float = ALPHA, power: float = POWER
) -> float:
    """The smallest mean paired difference a two-sided paired t-test at `alpha` finds with `power`,
    for len(diffs) questions and their observed standard deviation (noncentral t); NaN under 2."""
    from scipy import optimize

    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return float("nan")
    if np.all(d == d[0]):
        return 0.0  # no spread: any nonzero mean difference is seen
    sd, n = float(d.std(ddof=1)), len(d)
    hi = 3.0 * sd / np.sqrt(n)  # about the normal approximation; doubled until the power is reached
    while paired_t_power(hi, sd, n, alpha) < power:
        hi *= 2.0
    return float(optimize.brentq(lambda x: paired_t_power(x, sd, n, alpha) - power, 0.0, hi, xtol=1e-10))


def share_of(
    effect: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """mean(effect) / mean(reference) over paired questions, with a percentile bootstrap interval
    (questions resampled together). NaN where the reference's mean is not above 0; the interval is
    NaN where more than (1 - level) / 2 of the resamples' reference means are not (it is unbounded)."""
    e, r = np.asarray(effect, dtype=float), np.asarray(reference, dtype=float)
    if r.mean() <= 0:
        return float("nan"), float("nan"), float("nan")
    idx = resamples(len(e), n_boot, seed)
    num, den = e[idx].mean(axis=1), r[idx].mean(axis=1)
    tail = (1 - level) / 2
    if (den <= 0).mean() > tail:
        return float(e.mean() / r.mean()), float("nan"), float("nan")
    ratios = np.sign(num) * np.inf  # a resample where P2 did not move the score: an unbounded share
    ratios[num == 0] = 0.0
    ratios[den > 0] = num[den > 0] / den[den > 0]
    lo, hi = np.quantile(ratios, [tail, 1 - tail])
    return float(e.mean() / r.mean()), float(lo), float(hi)


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
    mde_none: float = float("nan")  # minimum detectable effect of each comparison
    mde_control: float = float("nan")
    p2: float = float("nan")  # the P2 prompt's mean score on the same questions, where answered
    p2_effect: float = float("nan")  # mean(P2 - none)
    share_p2: float = float("nan")  # diff_none / p2_effect, with its bootstrap interval
    share_p2_low: float = float("nan")
    share_p2_high: float = float("nan")
    judge_sees: bool | None = None  # the positive control of this pole: seen, missed, or not measured


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
    p2: Sequence[float] | np.ndarray | None = None,
    judge_sees: bool | None = None,
) -> Cell:
    """The evidence of one cell from per-question scores (controls: one list per draw; `p2`: the P2
    prompt's scores on the same questions; `judge_sees`: the pole's positive control)."""
    s, b = np.asarray(npti, dtype=float), np.asarray(none, dtype=float)
    c_draws = np.asarray(controls, dtype=float).reshape(len(controls), -1)
    if not len(s) or s.shape != b.shape or c_draws.shape[1] != len(s) or not len(controls):
        raise UserError(
            f"{trait} {pole} gamma {gamma:g}: scores of NPTI, none and every control need the same questions"
        )
    c = c_draws.mean(axis=0)
    d_none, d_control = s - b, s - c
    ci_n, ci_c = (
        mean_ci(d_none, n_boot=n_boot, seed=seed),
        mean_ci(d_control, n_boot=n_boot, seed=seed),
    )
    draw_means = c_draws.mean(axis=1)
    reach: dict = {"mde_none": min_detectable_effect(d_none), "mde_control": min_detectable_effect(d_control)}
    if p2 is not None:
        q = np.asarray(p2, dtype=float)
        if q.shape != s.shape:
            raise UserError(f"{trait} {pole} gamma {gamma:g}: P2 scores need the same questions as NPTI's")
        share = share_of(d_none, q - b, n_boot=n_boot, seed=seed)
        reach.update(p2=float(q.mean()), p2_effect=float((q - b).mean()), share_p2=share[0],
                     share_p2_low=share[1], share_p2_high=share[2])  # fmt: skip
    return Cell(
        trait, pole, float(gamma), len(s), float(b.mean()), float(s.mean()), float(c.mean()),
        float(draw_means.min()), float(draw_means.max()), len(controls),
        float(d_none.mean()), *ci_n, permutation_p(d_none, n_perm=n_perm, seed=seed),
        float(d_control.mean()), *ci_c, permutation_p(d_control, n_perm=n_perm, seed=seed), method=method, fluency=fluency,
        judge_sees=judge_sees, **reach,
    )  # fmt: skip


def judge_cells(cells: list[Cell], *, alpha: float = ALPHA, correction: str = "holm") -> list[Cell]:
    """Adjust the p-values across `cells` (both comparisons, one family) and give each its verdict;
    a cell whose judge missed the positive control is `judge blind` and outside the family."""
    if correction not in CORRECTIONS:
        raise UserError(
            f"unknown correction {correction!r}; choose {', '.join(CORRECTIONS)}", field="correction"
        )
    for x in cells:
        if x.judge_sees is False:
            x.q_none = x.q_control = float("nan")
            x.verdict = "judge blind"
    cells_tested = [x for x in cells if x.judge_sees is not False]
    adjusted = CORRECTIONS[correction]([x.p_none for x in cells_tested] + [x.p_control for x in cells_tested])
    for i, x in enumerate(cells_tested):
        x.q_none, x.q_control = adjusted[i], adjusted[len(cells_tested) + i]
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
