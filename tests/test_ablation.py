"""Ablations: every condition runs on the organism, with the intended sets and switches."""

from __future__ import annotations

import pytest

from npti_lens.workflows.ablation import AblationConfig, conditions, layer_bands, run_ablation
from tests.helpers import missing_organism, needs

pytestmark = needs("the organism's weights", missing_organism())


def test_layer_bands_cover_every_layer_once():
    for n in (1, 2, 3, 4, 7, 32):
        bands = layer_bands(n)
        assert sorted(sum(bands.values(), [])) == list(range(n))


def test_every_condition_runs_on_the_organism():
    from pathlib import Path

    from npti_lens.judges.organism import OrganismJudge
    from npti_lens.judges.registry import score_rows, summarize
    from npti_lens.method.induction import load_pair
    from npti_lens.model.generation import GenerateConfig
    from npti_lens.model.load import load_model
    from npti_lens.organism.corpus import question_split

    root = Path(__file__).resolve().parents[1]
    target, opp = load_pair(root / "neuron_results" / "organism", "Neuroticism", "low")
    cfg = AblationConfig(gamma=3.0, gammas="1,3", top_k="5,20")
    conds = conditions(target, opp, cfg)
    names = [c["condition"] for c in conds]
    assert names[:5] == ["none", "both", "activate_only", "deactivate_only", "random"]
    assert names.count("gamma_sweep") == 2 and names.count("top_k") == 2
    # the organism's 4 layers in thirds of 1 (the middle takes the rest); a band appears where it holds neurons
    want = {"layers_early": [0], "layers_middle": [1, 2], "layers_late": [3]}
    assert target.n_layers == 4
    in_band = {b: int(target.per_layer()[ls].sum() + opp.per_layer()[ls].sum()) for b, ls in want.items()}
    bands = [c for c in conds if c["condition"].startswith("layers_")]
    assert [c["condition"] for c in bands] == [b for b, n in in_band.items() if n] == list(want)
    for c in bands:
        t, o = c["pairs"][0]
        assert set(t.layer.tolist() + o.layer.tolist()) <= set(want[c["condition"]])
        assert len(t) + len(o) == in_band[c["condition"]]
    rand = next(c for c in conds if c["condition"] == "random")["pairs"][0]
    assert rand[0].per_layer().tolist() == target.per_layer().tolist()
    assert not set(rand[0].flat().tolist()) & set(target.flat().tolist() + opp.flat().tolist())
    top5 = next(c for c in conds if c.get("k") == 5)["pairs"][0]
    assert top5[0].flat().tolist() == target.flat()[:5].tolist()

    model = load_model("organism")
    qs = question_split()["Neuroticism"]["test"][:6]
    rows = run_ablation(
        model, target, opp, qs, cfg, GenerateConfig(max_new_tokens=40, batch_size=8, repetition_penalty=1.0)
    )
    assert len(rows) == len(conds) * len(qs)
    by = {
        (r["condition"], r["gamma"], r["k"]): r
        for r in summarize(score_rows(rows, OrganismJudge()), keys=("condition", "gamma", "k"))
    }
    assert by[("none", None, None)]["trait_score_mean"] < 0.5
    assert by[("both", 3.0, None)]["trait_score_mean"] > by[("none", None, None)]["trait_score_mean"] + 0.3
    assert (
        by[("activate_only", 3.0, None)]["trait_score_mean"]
        > by[("deactivate_only", 3.0, None)]["trait_score_mean"]
    )
    assert names.count("random") == 5  # five control draws, each its own seed
    draws = [c["pairs"][0][0].flat().tolist() for c in conds if c["condition"] == "random"]
    assert len({tuple(d) for d in draws}) == 5
    from npti_lens.workflows.ablation import ablation_evidence

    cell = ablation_evidence(score_rows(rows, OrganismJudge()))
    assert cell.k == 5 and cell.n == len(qs) and cell.gamma == 3.0
    assert cell.diff_none == pytest.approx(
        by[("both", 3.0, None)]["trait_score_mean"] - by[("none", None, None)]["trait_score_mean"]
    )
    act = [r for r in rows if r["condition"] == "activate_only"]
    assert act[0]["n_clamped"] == 0 and act[0]["n_shifted"] == len(target)
