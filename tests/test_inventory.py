"""Inventory files and scoring: against hand computations on fixed option probabilities."""

from __future__ import annotations

import csv
import statistics

import numpy as np
import pytest

from npti_lens.core.constants import TRAITS
from npti_lens.core.errors import UserError
from npti_lens.evaluation.profiles import Administration, InventoryConfig, InventoryResult
from npti_lens.inputs.inventory import (
    SHIPPED_INVENTORY,
    Item,
    cronbach_alpha,
    keyed,
    load_inventory,
    rated_mean_ci,
    rating_and_mass,
)
from tests.helpers import SHARED

IPIP120 = SHARED / "reference" / "ipip-neo-120" / "items.csv"


def test_shipped_inventory_has_both_keyings_in_every_facet():
    items = load_inventory()
    assert len(items) == 60 and len({it.text for it in items}) == 60
    facets: dict[tuple[str, int], list[str]] = {}
    for it in items:
        facets.setdefault((it.domain, it.facet), []).append(it.keyed)
    assert len(facets) == 30 and {d for d, _ in facets} == set(TRAITS)
    assert all(sorted(k) == ["+", "-"] for k in facets.values())


@pytest.mark.skipif(not IPIP120.is_file(), reason="../shared reference data absent")
def test_ipip_neo_120_loads():
    items = load_inventory(IPIP120)
    assert len(items) == 120
    assert all(sum(it.domain == t for it in items) == 24 for t in TRAITS)
    assert len({(it.domain, it.facet) for it in items}) == 30
    # its facet numbers and names (up to case) are the ones the shipped inventory uses
    ours = {(it.domain, it.facet, it.facet_name.lower()) for it in load_inventory()}
    assert {(it.domain, it.facet, it.facet_name.lower()) for it in items} == ours


def test_inventory_errors_name_file_and_line(tmp_path):
    rows = list(csv.reader(SHIPPED_INVENTORY.open()))
    bad = tmp_path / "inv.csv"

    def write(rows):
        with bad.open("w", newline="") as f:
            csv.writer(f).writerows(rows)

    write([rows[0], rows[1], [*rows[2][:2], "Honesty", *rows[2][3:]]])
    with pytest.raises(UserError, match=r"inv.csv:3: domain 'Honesty'"):
        load_inventory(bad)
    write([rows[0], [*rows[1][:5], "x"]])
    with pytest.raises(UserError, match=r"inv.csv:2: keyed 'x' must be \+ or -"):
        load_inventory(bad)
    write([rows[0][:5], rows[1][:5]])
    with pytest.raises(UserError, match=r"inv.csv:1: missing column\(s\) keyed"):
        load_inventory(bad)
    write([rows[0], rows[1], rows[1]])
    with pytest.raises(UserError, match="appears twice"):
        load_inventory(bad)
    with pytest.raises(UserError, match="--inventory: .* not found"):
        load_inventory(tmp_path / "none.csv")


def test_rating_and_mass_keying_and_reversal_by_hand():
    p_fwd = np.array([[0.0, 0.1, 0.1, 0.3, 0.5], [0.05, 0.05, 0.1, 0.1, 0.2], [0, 0, 0, 0, 0]])
    fwd, mass = rating_and_mass(p_fwd)
    assert fwd[0] == pytest.approx(1 * 0 + 2 * 0.1 + 3 * 0.1 + 4 * 0.3 + 5 * 0.5)  # 4.2, mass 1
    assert mass[1] == pytest.approx(0.5)
    assert fwd[1] == pytest.approx((0.05 + 0.1 + 0.3 + 0.4 + 1.0) / 0.5)  # renormalised: 3.7
    assert np.isnan(fwd[2]) and mass[2] == 0  # no mass on the options: no rating
    # reversed scale: digit 1 means "very accurate" = rating 5
    rev, _ = rating_and_mass(np.array([[0.4, 0.4, 0.1, 0.1, 0.0]]), reversed_scale=True)
    assert rev[0] == pytest.approx(5 * 0.4 + 4 * 0.4 + 3 * 0.1 + 2 * 0.1)  # 4.1
    items = [
        Item("1", "a", "Openness", 1, "Imagination", "+"),
        Item("2", "b", "Openness", 1, "Imagination", "-"),
    ]
    assert keyed(np.array([4.15, 4.15]), items) == pytest.approx([4.15, 6 - 4.15])


def test_cronbach_alpha_by_hand():
    x = [[1, 2, 3], [2, 3, 3], [3, 4, 5], [4, 4, 4], [2, 2, 1]]
    k = 3
    item_vars = sum(statistics.variance([row[j] for row in x]) for j in range(k))
    total_var = statistics.variance([sum(row) for row in x])
    assert cronbach_alpha(np.array(x)) == pytest.approx(k / (k - 1) * (1 - item_vars / total_var))
    assert cronbach_alpha(np.array([[1, 2], [2, 3], [3, 4]])) == pytest.approx(1.0)  # parallel items
    assert np.isnan(cronbach_alpha(np.array([[1.0, 2.0]])))


def test_rated_mean_ci_matches_a_plain_loop():
    values = np.array([3.1, 4.0, 2.2, 3.8, 4.4, 2.9, 3.3])
    lo, hi = rated_mean_ci(values, n_boot=500, seed=7)
    rng = np.random.default_rng(7)
    draws = rng.integers(0, len(values), size=(500, len(values)))
    means = sorted(sum(values[j] for j in row) / len(values) for row in draws)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert lo < values.mean() < hi


def test_domain_and_facet_tables_from_fixed_probabilities():
    items = [
        Item("1", "a", "Extraversion", 1, "Friendliness", "+"),
        Item("2", "b", "Extraversion", 1, "Friendliness", "-"),
        Item("3", "c", "Extraversion", 2, "Gregariousness", "+"),
        Item("4", "d", "Neuroticism", 1, "Anxiety", "+"),
    ]
    one_hot = np.eye(5)
    base_f = one_hot[[3, 1, 4, 2]]  # ratings 4, 2, 5, 3 on the forward scale
    base_r = one_hot[[1, 3, 0, 2]]  # digits 2, 4, 1, 3 reversed = ratings 4, 2, 5, 3: consistent
    ind_f = one_hot[[4, 0, 4, 2]]  # 5, 1, 5, 3
    ind_r = one_hot[[1, 3, 1, 2]]  # reversed: 4, 2, 4, 3
    resp = np.array([[4.0, 4.0, 5.0, 3.0], [2.0, 1.0, 2.0, 3.0], [3.0, 3.0, 4.0, 1.0]])
    cfg = InventoryConfig(n_boot=200, boot_seed=3)
    res = InventoryResult(
        items, [Administration("none", base_f, base_r, resp), Administration("ind", ind_f, ind_r)], cfg
    )
    dom = {(r["condition"], r["domain"]): r for r in res.domain_rows()}
    e = dom[("none", "Extraversion")]
    keyed_base = [4, 6 - 2, 5]
    assert e["score"] == pytest.approx(np.mean(keyed_base)) and e["option_mass"] == pytest.approx(1.0)
    assert e["score_forward"] == pytest.approx(e["score_reversed"])
    assert e["alpha"] == pytest.approx(cronbach_alpha(resp[:, :3]))
    assert (e["ci_low"], e["ci_high"]) == pytest.approx(
        rated_mean_ci(np.array(keyed_base, float), n_boot=200, seed=3)
    )
    i = dom[("ind", "Extraversion")]
    keyed_ind = [4.5, 6 - 1.5, 4.5]
    assert i["score"] == pytest.approx(np.mean(keyed_ind))
    assert i["score_forward"] == pytest.approx(np.mean([5, 5, 5])) and i["score_reversed"] == pytest.approx(
        np.mean([4, 4, 4])
    )
    assert i["shift"] == pytest.approx(np.mean(keyed_ind) - np.mean(keyed_base))
    diff = np.array(keyed_ind) - np.array(keyed_base)
    assert (i["shift_ci_low"], i["shift_ci_high"]) == pytest.approx(rated_mean_ci(diff, n_boot=200, seed=3))
    assert np.isnan(i["alpha"])  # no respondents under the induction here
    assert dom[("ind", "Neuroticism")]["shift"] == pytest.approx(0.0)
    facets = {(r["condition"], r["facet_name"]): r["score"] for r in res.facet_rows()}
    assert facets[("none", "Friendliness")] == pytest.approx(4.0) and facets[
        ("ind", "Gregariousness")
    ] == pytest.approx(4.5)
    rows = res.item_rows()
    assert (
        len(rows) == 8
        and rows[1]["keyed_score"] == pytest.approx(4.0)
        and rows[1]["rating"] == pytest.approx(2.0)
    )
