"""Selection equals a plain re-implementation of the published rule; FDR and q95 against oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from npti_lens.core.constants import N_BINS
from npti_lens.core.errors import UserError
from npti_lens.method.selection import SelectConfig, bh_qvalues, q95, register_rule, select_neurons
from npti_lens.method.stats import Stats


def random_stats(seed: int, n_layers=4, d_mlp=300, n_tokens=5000) -> Stats:
    rng = np.random.default_rng(seed)
    p = rng.beta(0.8, 0.8, size=(n_layers, d_mlp))
    hist = np.zeros((n_layers, d_mlp, N_BINS), dtype=np.int64)
    for layer in range(n_layers):
        for i in range(d_mlp):
            n_act = rng.binomial(n_tokens, p[layer, i])
            hist[layer, i, 0] = n_tokens - n_act
            bins = np.clip(rng.geometric(rng.uniform(0.01, 0.2), size=n_act), 1, N_BINS - 1)
            hist[layer, i] += np.bincount(bins, minlength=N_BINS)
    h = torch.from_numpy(hist)
    n_active = n_tokens - h[..., 0]
    return Stats(
        n_tokens=n_tokens,
        n_active=n_active,
        hist=h,
        sum=torch.zeros(n_layers, d_mlp, dtype=torch.float64),
        sum_sq=torch.zeros(n_layers, d_mlp, dtype=torch.float64),
    )


def reference_rule(sp: Stats, sq: Stats, min_neurons: int, threshold: float):
    """The published selection in plain Python: diff, sort descending, max(min, #>=thr), q95."""
    n_layers, d_mlp = sp.shape
    pa = (sp.n_active.float() / sp.n_tokens).numpy()
    qa = (sq.n_active.float() / sq.n_tokens).numpy()
    rows = []
    for layer in range(n_layers):
        for i in range(d_mlp):
            rows.append((float(np.float32(pa[layer, i] - qa[layer, i])), layer, i))
    rows.sort(key=lambda r: -r[0])  # stable: ties stay in layer-major order
    n_keep = max(min_neurons, sum(1 for r in rows if r[0] >= threshold))
    out = []
    for diff, layer, i in rows[:n_keep]:
        counts = sp.hist[layer, i].tolist()
        total, cum, first = sum(counts), 0, 0
        for first, c in enumerate(counts):  # noqa: B007 - the bin where the loop stops is the answer
            cum += c
            if cum >= 0.95 * total:
                break
        lower = 0.0 if first == 0 else (first - 1) / 100
        out.append((layer, i, diff, float(pa[layer, i]), float(np.float32(lower))))
    return out


@pytest.mark.parametrize("min_neurons,threshold", [(2000, 0.1), (10, 0.1), (50, 0.3), (0, 0.0)])
def test_npti_rule_equals_reference(min_neurons, threshold):
    sp, sq = random_stats(1), random_stats(2)
    ns = select_neurons(
        sp,
        sq,
        SelectConfig(min_neurons=min_neurons, threshold=threshold),
        trait="Extraversion",
        pole="high",
        model="m",
    )
    ref = reference_rule(sp, sq, min_neurons, threshold)
    assert len(ns) == len(ref)
    assert ns.layer.tolist() == [r[0] for r in ref]
    assert ns.index.tolist() == [r[1] for r in ref]
    assert ns.diff.tolist() == [r[2] for r in ref]
    assert ns.p_active.tolist() == [float(np.float32(r[3])) for r in ref]
    assert ns.q95.tolist() == [r[4] for r in ref]


def test_ties_keep_layer_major_order():
    sp, sq = random_stats(3, n_layers=2, d_mlp=10), random_stats(3, n_layers=2, d_mlp=10)
    ns = select_neurons(sp, sq, SelectConfig(min_neurons=20), trait="Openness", pole="low", model="m")
    assert (ns.diff == 0).all()
    assert ns.flat().tolist() == list(range(20))


def test_q95_hand_computed():
    s = Stats.zeros(1, 3)
    s.hist[0, 0, 0] = 100  # all a <= 0
    s.hist[0, 1, 1] = 94
    s.hist[0, 1, 38] = 6  # 94% in (0, 0.01]: reach 95% at bin 38
    s.hist[0, 2, 301 - 1] = 1  # all above 2.99
    assert q95(s)[0].tolist() == [0.0, 0.37, 2.99]


def test_fdr_against_scipy_and_plain_bh():
    sp, sq = random_stats(4, n_layers=2, d_mlp=200), random_stats(5, n_layers=2, d_mlp=200)
    ns = select_neurons(
        sp, sq, SelectConfig(method="fdr", alpha=0.01), trait="Neuroticism", pole="high", model="m"
    )
    x1, x2 = sp.n_active.double().flatten().numpy(), sq.n_active.double().flatten().numpy()
    n1, n2 = sp.n_tokens, sq.n_tokens
    pool = (x1 + x2) / (n1 + n2)
    z = (x1 / n1 - x2 / n2) / np.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
    p = norm.sf(z)
    m = len(p)
    order = np.argsort(p, kind="stable")
    q = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):  # plain step-up BH
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = running
    keep = {int(i) for i in np.nonzero((q <= 0.01) & (x1 / n1 > x2 / n2))[0]}
    assert set(ns.flat().tolist()) == keep
    assert len(keep) > 10
    flat = ns.flat().numpy()
    np.testing.assert_allclose(ns.z.numpy(), z[flat], rtol=1e-9)
    np.testing.assert_allclose(ns.q.numpy(), q[flat], rtol=1e-9)
    assert (np.diff(ns.diff.numpy()) <= 0).all()


def test_bh_is_monotone_in_p():
    p = torch.tensor([0.01, 0.04, 0.03, 0.5, 0.001], dtype=torch.float64)
    q = bh_qvalues(p)
    order = torch.argsort(p)
    assert (q[order].diff() >= 0).all()
    assert float(q[4]) == pytest.approx(0.005)


def test_unknown_method_and_double_registration():
    sp = random_stats(1, n_layers=1, d_mlp=5)
    with pytest.raises(UserError, match="unknown selection method"):
        select_neurons(sp, sp, SelectConfig(method="nope"), trait="Openness", pole="high", model="m")
    with pytest.raises(ValueError, match="already registered"):
        register_rule("npti")(lambda d, q, c: d)
