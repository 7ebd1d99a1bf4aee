"""Per-cell evidence: bootstrap, permutation and multiplicity against plain computations; verdicts."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from npti_lens.evaluation import evidence


def test_bootstrap_interval_equals_a_plain_loop():
    diffs = [0.1, -0.2, 0.3, 0.0, 0.5, 0.25, -0.05, 0.4]
    rng = np.random.default_rng(7)
    means = []
    for _ in range(500):
        idx = rng.integers(0, len(diffs), size=len(diffs))
        means.append(sum(diffs[i] for i in idx) / len(diffs))
    want = tuple(np.quantile(means, [0.025, 0.975]))
    assert evidence.mean_ci(diffs, n_boot=500, seed=7) == pytest.approx(want, abs=1e-12)


def test_exact_permutation_p_equals_enumerating_every_sign_pattern():
    diffs = [0.2, 0.0, -0.1, 0.3, 0.3, 0.0, 0.05, -0.25, 0.4]
    observed = abs(sum(diffs))
    hits = total = 0
    for signs in itertools.product((-1, 1), repeat=len(diffs)):
        total += 1
        hits += abs(sum(s * d for s, d in zip(signs, diffs, strict=True))) >= observed - 1e-12
    assert evidence.permutation_p(diffs) == pytest.approx(hits / total)
    assert evidence.permutation_p([0.0, 0.0]) == 1.0
    assert evidence.permutation_p([1.0] * 10) == pytest.approx(2 / 2**10)


def test_monte_carlo_permutation_p_equals_a_plain_loop():
    diffs = [0.1 * ((i % 5) - 1) + 0.05 for i in range(20)]  # 20 nonzero: sampled, not enumerated
    rng = np.random.default_rng(3)
    signs = rng.choice((-1.0, 1.0), size=(300, 20))
    observed = abs(sum(diffs))
    hits = sum(
        abs(sum(s * d for s, d in zip(row, diffs, strict=True))) >= observed - 1e-9 * observed
        for row in signs
    )
    assert evidence.permutation_p(diffs, n_perm=300, seed=3) == pytest.approx((1 + hits) / 301)


def test_holm_and_bh_against_hand_computations():
    ps = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, running max
    assert evidence.holm(ps) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted p * 4 / rank = 0.02, 0.02, 0.04, 0.04, running min from the top
    assert evidence.benjamini_hochberg(ps) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert evidence.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8 is capped at 1


def _cell(npti, none, controls):
    return evidence.cell("Openness", "low", 3.0, npti, none, controls, n_boot=200)


def test_verdicts_and_a_verdict_that_flips_when_the_control_matches():
    n = 20
    rnd = random.Random(0)
    none = [0.0] * n
    npti = [1.0] * n
    weak = [[float(rnd.random() < 0.2) for _ in range(n)] for _ in range(5)]
    specific = evidence.judge_cells([_cell(npti, none, weak)])[0]
    assert specific.verdict == "specific" and specific.k == 5 and specific.diff_none == 1.0
    # the same NPTI scores, now with controls that do as well: no longer specific
    matching = [[1.0] * n for _ in range(5)]
    assert evidence.judge_cells([_cell(npti, none, matching)])[0].verdict == "not distinguishable"
    # one control draw as good as NPTI is enough to withhold "specific"
    one_good = [*weak[:4], [1.0] * n]
    assert evidence.judge_cells([_cell(npti, none, one_good)])[0].verdict == "not distinguishable"
    wrong = evidence.judge_cells([_cell([0.0] * n, [1.0] * n, weak)])[0]
    assert wrong.verdict == "wrong way" and wrong.diff_none == -1.0
    # many cells: the correction can withhold a verdict one cell alone would get
    few = [0.0] * 12 + [1.0] * 8  # exact p = 2 / 2^8 for both comparisons
    alone = evidence.judge_cells([_cell(few, none, [[0.0] * n] * 5)])[0]
    many = evidence.judge_cells([_cell(few, none, [[0.0] * n] * 5) for _ in range(40)])[0]
    assert alone.p_none == pytest.approx(2 / 2**8) and alone.q_none == pytest.approx(2 * 2 / 2**8)
    assert alone.verdict == "specific"
    assert many.q_none == pytest.approx(80 * 2 / 2**8) and many.verdict == "not distinguishable"


def test_minimum_detectable_effect_has_the_power_it_claims():
    """At the MDE a paired t-test at 0.05 rejects 80% of the time: checked by simulating the test on
    normal differences with the observed spread (a plain power computation), and against the normal
    approximation (z_0.975 + z_0.8) sd / sqrt(n), which it must exceed slightly."""
    from scipy import stats

    diffs = np.array([0.12, -0.05, 0.3, 0.0, 0.22, -0.1, 0.15, 0.05, 0.4, -0.2, 0.1, 0.08])
    n, sd = len(diffs), diffs.std(ddof=1)
    mde = evidence.min_detectable_effect(diffs)
    rng = np.random.default_rng(0)
    sims = rng.normal(mde, sd, size=(200_000, n))
    t = sims.mean(axis=1) / (sims.std(axis=1, ddof=1) / np.sqrt(n))
    power = np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1))
    assert power == pytest.approx(0.80, abs=0.005)
    z = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / np.sqrt(n)
    assert z < mde < 1.2 * z
    assert evidence.min_detectable_effect([0.1, 0.1, 0.1]) == 0.0  # no spread
    assert np.isnan(evidence.min_detectable_effect([0.3]))


def test_share_of_p2_and_its_interval_by_hand():
    npti = np.array([0.2, 0.1, 0.0, 0.3, 0.1, 0.2])  # NPTI - none, per question
    p2 = np.array([0.4, 0.2, 0.1, 0.5, 0.3, 0.3])  # P2 - none
    share, lo, hi = evidence.share_of(npti, p2, n_boot=300, seed=5)
    assert share == pytest.approx(0.9 / 1.8)
    rng = np.random.default_rng(5)
    ratios = []
    for _ in range(300):
        idx = rng.integers(0, 6, size=6)
        ratios.append(sum(npti[i] for i in idx) / sum(p2[i] for i in idx))
    want = np.quantile(ratios, [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(want), abs=1e-12)
    assert all(np.isnan(x) for x in evidence.share_of(npti, -p2))  # P2 did not move the score: no share
    noisy = evidence.share_of(npti, np.array([0.5, -0.6, 0.4, -0.5, 0.3, -0.05]))  # P2 barely above 0
    assert noisy[0] == pytest.approx(0.9 / 0.05) and np.isnan(noisy[1]) and np.isnan(noisy[2])


def test_a_pole_the_judge_does_not_see_is_judge_blind_and_outside_the_family():
    n = 8
    npti, none = [1.0] * n, [0.0] * n
    weak = [[0.0] * n] * 5
    blind = evidence.cell("Openness", "low", 3.0, npti, none, weak, n_boot=200, judge_sees=False)
    seen = evidence.cell("Openness", "high", 3.0, npti, none, weak, n_boot=200, judge_sees=True)
    alone = evidence.judge_cells([evidence.cell("Openness", "high", 3.0, npti, none, weak, n_boot=200)])[0]
    evidence.judge_cells([blind, seen])
    assert blind.verdict == "judge blind" and np.isnan(blind.q_none)
    assert seen.verdict == "specific" and seen.q_none == pytest.approx(alone.q_none)  # one cell in the family
    assert blind.judge_sees is False and alone.judge_sees is None
    with_p2 = evidence.cell("Openness", "high", 3.0, [0.5] * 4 + [0.7] * 4, none, weak, p2=[1.0] * n)
    assert with_p2.p2 == 1.0 and with_p2.p2_effect == 1.0 and with_p2.share_p2 == pytest.approx(0.6)
    assert with_p2.mde_none > 0 and with_p2.mde_control > 0


def test_the_evidence_figure_draws_a_gamma_grid_or_each_cell_at_its_chosen_strength(tmp_path):
    """The organism measures every cell at every gamma: one panel per gamma, rows in one order. The
    real demo keeps each cell at its own chosen strength: one panel, the strength in each label (a
    grid there would put cells under another cell's name)."""
    from npti_lens.evaluation.curves import evidence_forest, forest_panels

    def cell(t, p, g, method="npti"):
        return {"trait": t, "pole": p, "gamma": g, "method": method, "verdict": "judge blind",
                "diff_none": 0.1, "ci_none_low": 0.0, "ci_none_high": 0.2,
                "diff_control": 0.0, "ci_control_low": -0.1, "ci_control_high": 0.1}  # fmt: skip

    grid = [cell("Openness", "high", 1.0), cell("Openness", "low", 1.0), cell("Openness", "low", 2.0),
            cell("Openness", "high", 2.0)]  # fmt: skip
    panels, labels = forest_panels(grid)
    assert [t for t, _ in panels] == ["gamma 1", "gamma 2"]
    assert labels == ["Openness high", "Openness low"]
    assert [[c["pole"] for c in rows] for _, rows in panels] == [["high", "low"], ["high", "low"]]
    chosen = [
        cell("Openness", "high", 0.5),
        cell("Openness", "low", 2.0),
        cell("Neuroticism", "low", 4.0, "vector"),
    ]
    panels, labels = forest_panels(chosen)
    assert [t for t, _ in panels] == [""] and panels[0][1] == chosen
    assert labels == ["Openness high, γ 0.5", "Openness low, γ 2", "Neuroticism low, vector 4"]
    for cells in (grid, chosen):
        assert evidence_forest(cells, tmp_path / f"f{len(cells)}.png").stat().st_size > 0
