"""Overlap and layer analyses against direct computations; the published Llama-3 sets."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from scipy.stats import hypergeom

from npti_lens.cli import main
from npti_lens.evaluation.overlap import layer_distribution, overlap
from npti_lens.method.neurons import NeuronSet, import_reference
from tests.helpers import REFERENCE


def nset(trait: str, pole: str, flat: list[int], n_layers: int = 4, d_mlp: int = 10) -> NeuronSet:
    f = torch.tensor(flat)
    n = len(flat)
    return NeuronSet(
        trait=trait,
        pole=pole,
        model="m",
        n_layers=n_layers,
        d_mlp=d_mlp,
        layer=f // d_mlp,
        index=f % d_mlp,
        diff=torch.linspace(0.9, 0.1, n, dtype=torch.float64),
        p_active=torch.full((n,), 0.5, dtype=torch.float64),
        q95=torch.ones(n, dtype=torch.float64),
    )


def test_overlap_by_hand():
    sets = {
        s.name: s
        for s in (
            nset("Openness", "high", [0, 1, 2, 3]),
            nset("Openness", "low", [10, 11]),
            nset("Neuroticism", "high", [2, 3, 4, 10, 39]),
        )
    }
    ov = overlap(sets)
    assert ov.names == ["Openness_high", "Openness_low", "Neuroticism_high"]
    assert ov.shared.tolist() == [[4, 0, 2], [0, 2, 1], [2, 1, 5]]
    assert ov.jaccard[0, 2] == pytest.approx(2 / 7) and ov.overlap_coefficient[0, 2] == pytest.approx(2 / 4)
    assert ov.p_value[0, 2] == pytest.approx(hypergeom.sf(1, 40, 4, 5))
    assert ov.expected[0, 2] == pytest.approx(4 * 5 / 40)
    assert np.isnan(ov.p_value[1, 1])
    assert "share no neuron" in ov.notes[0]
    dist = layer_distribution(sets)
    assert dist.counts.tolist() == [[4, 0, 0, 0], [0, 2, 0, 0], [3, 1, 0, 1]]
    assert dist.share[2].tolist() == [0.3, 0.1, 0.0, 0.1]


def test_cli_writes_tables_and_figures(tmp_path, capsys):
    for s in (nset("Openness", "high", [0, 1, 2, 3]), nset("Openness", "low", [10, 11, 2])):
        s.save(tmp_path / "n" / s.name)
    assert main(["analyze", "overlap", str(tmp_path / "n"), "--out", str(tmp_path / "o")]) == 0
    assert main(["analyze", "layers", str(tmp_path / "n"), "--out", str(tmp_path / "o")]) == 0
    rows = list(csv.reader((tmp_path / "o" / "overlap_jaccard.csv").open()))
    assert rows[0] == ["", "Openness_high", "Openness_low"] and float(rows[1][2]) == pytest.approx(1 / 6)
    assert list(csv.reader((tmp_path / "o" / "layers.csv").open()))[2] == ["Openness_low", "1", "2", "0", "0"]
    for f in ("overlap_jaccard.png", "overlap_jaccard.pdf", "layers.png", "layers.pdf"):
        assert (tmp_path / "o" / f).stat().st_size > 1000
    assert "share 1 neurons" in capsys.readouterr().out


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared reference data absent")
def test_published_llama3_sets(tmp_path):
    sets = import_reference(REFERENCE / "neuron_results_llama3_8b_instruct")
    ov = overlap(sets)
    flat = {k: set(v.flat().tolist()) for k, v in sets.items()}
    a, b = flat["Extraversion_low"], flat["Neuroticism_high"]
    direct = len(a & b) / len(a | b)
    i, j = ov.names.index("Extraversion_low"), ov.names.index("Neuroticism_high")
    assert ov.jaccard[i, j] == pytest.approx(direct, abs=1e-12)
    assert direct == pytest.approx(0.165, abs=0.005)
    counts = layer_distribution(sets).counts
    for name in sets:
        per_layer = [sum(1 for x in flat[name] if x // 14336 == layer) for layer in range(32)]
        assert counts[ov.names.index(name)].tolist() == per_layer


@pytest.mark.parametrize("script", ["fig_layer_distribution.py", "fig_overlap.py"])
def test_analysis_scripts_run(script):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, str(root / "analyses" / script)],
        capture_output=True,
        text=True,
        cwd=root / "analyses",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (root / "analyses" / "out" / "organism").is_dir()


def test_figures_cli(tmp_path, capsys):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    demo = tmp_path / "demo"
    demo.mkdir()
    rows = [
        {"condition": c, "gamma": g, "target": t, "fluency": 1.0, "trait": "Openness", "pole": "high"}
        for c, g, t in (
            ("none", None, 0.5),
            ("npti", 1.0, 0.6),
            ("npti", 2.0, 0.7),
            ("random", 1.0, 0.5),
            ("random", 2.0, 0.45),
            ("persona", None, 1.0),
        )
    ]
    (demo / "demo_results.json").write_text(__import__("json").dumps({"rows": rows}))
    assert (
        main(
            [
                "figures",
                "--out",
                str(tmp_path / "f"),
                "--neurons",
                str(root / "neuron_results" / "organism"),
                "--demo",
                str(demo),
            ]
        )
        == 0
    )
    for f in ("layers", "overlap_jaccard", "gamma_sweep"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "f" / f"{f}.{ext}").stat().st_size > 1000
    assert main(["figures", "--out", str(tmp_path / "g")]) == 2
    assert "nothing to draw" in capsys.readouterr().err


def test_method_table_and_figure_from_score_summaries(tmp_path, capsys):
    import csv

    from npti_lens.evaluation.figures import method_table

    rows = [
        {"trait": "Extraversion", "pole": "high", "condition": c, "gamma": g, "score": s, "sem": e}
        for c, g, s, e in (
            ("none", None, 2.1, 0.1),
            ("simple", None, 3.0, 0.2),
            ("persona", None, 4.5, 0.1),
            ("npti", 1.0, 3.5, 0.3),
            ("npti", 1.5, 3.9, 0.2),
            ("random", 1.0, 2.2, float("nan")),
            ("both", 1.0, 9.9, 0.0),  # an ablation condition: not a method of the comparison
        )
    ]
    with pytest.raises(ValueError, match="gammas"):
        method_table(rows)
    with pytest.raises(ValueError, match="no gamma 2"):
        method_table(rows, gamma=2.0)
    t = method_table(rows, gamma=1.0)
    assert list(t) == ["none", "simple", "p2", "npti", "random"]
    assert t["npti"]["Extraversion_high"] == (3.5, 0.3) and t["p2"]["Extraversion_high"] == (4.5, 0.1)
    assert t["random"]["Extraversion_high"] == (2.2, 0.0)  # no SEM: no error bar
    # from `npti score` summaries (one folder per method), as a user would pass them
    folders = []
    for r in rows:
        d = tmp_path / f"{r['condition']}_{r['gamma']}"
        d.mkdir()
        with open(d / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(
                f,
                [
                    "trait",
                    "pole",
                    "condition",
                    "gamma",
                    "k",
                    "layers",
                    "n",
                    "trait_score_mean",
                    "trait_score_sem",
                ],
            )
            w.writeheader()
            w.writerow({**{k: r[k] for k in ("trait", "pole", "condition")}, "gamma": r["gamma"] if r["gamma"] is not None else "",
                        "n": 10, "trait_score_mean": r["score"], "trait_score_sem": r["sem"]})  # fmt: skip
        folders.append(str(d))
    args = ["figures", "--out", str(tmp_path / "f"), "--scores", *folders]
    assert main(args) == 2 and "choose it with --gamma" in capsys.readouterr().err
    assert main([*args, "--gamma", "2"]) == 2 and "no gamma 2" in capsys.readouterr().err
    assert main([*args, "--gamma", "1.5"]) == 0
    assert (tmp_path / "f" / "method_comparison.png").stat().st_size > 1000
    assert (tmp_path / "f" / "method_comparison.pdf").exists()
