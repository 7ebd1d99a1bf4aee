"""Neuron sets: save/load round trip, import of the reference's published sets."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from npti_lens.core.errors import UserError
from npti_lens.method.neurons import NeuronSet, import_reference, load_neuron_sets
from tests.helpers import REFERENCE


def small_set() -> NeuronSet:
    return NeuronSet(
        trait="Extraversion",
        pole="high",
        model="tiny",
        n_layers=3,
        d_mlp=10,
        layer=torch.tensor([2, 0, 1]),
        index=torch.tensor([9, 3, 0]),
        diff=torch.tensor([0.5, 0.3, 0.1], dtype=torch.float64),
        p_active=torch.tensor([0.9, 0.6, 0.4], dtype=torch.float64),
        q95=torch.tensor([0.37, 1.2, 0.0], dtype=torch.float64),
        method="npti",
        params={"min_neurons": 2},
    )


def test_round_trip(tmp_path):
    ns = small_set()
    ns.save(tmp_path / ns.name)
    back = load_neuron_sets(tmp_path)["Extraversion_high"]
    for c in ("layer", "index", "diff", "p_active", "q95"):
        assert torch.equal(getattr(back, c), getattr(ns, c).to(getattr(back, c).dtype))
    assert torch.isnan(back.z).all() and back.params == {"min_neurons": 2}
    assert back.per_layer().tolist() == [1, 1, 1]
    assert back.top(2).index.tolist() == [9, 3]
    assert (tmp_path / ns.name / "neurons.csv").read_text().splitlines()[1].startswith("2,9,0.5")
    assert list(back.to_frame().columns)[:5] == ["layer", "index", "diff", "p_active", "q95"]


def test_out_of_range_is_refused():
    with pytest.raises(UserError, match="outside"):
        NeuronSet(
            trait="Openness",
            pole="low",
            model="m",
            n_layers=2,
            d_mlp=4,
            layer=torch.tensor([2]),
            index=torch.tensor([0]),
            diff=torch.zeros(1),
            p_active=torch.zeros(1),
            q95=torch.zeros(1),
        )


def test_import_small_reference_files(tmp_path):
    data = {"0": [[0, 5, 0.2, 0.5, 0.37]], "1": [[1, 2, 0.4, 0.8, 0.65]]}
    (tmp_path / "Openness_dict.json").write_text(json.dumps(data))
    with gzip.open(tmp_path / "Openness_reversed_dict.json.gz", "wt") as f:
        f.write(json.dumps({"1": [[1, 3, 0.3, 0.6, 0.1]]}))
    sets = import_reference(tmp_path, model="m", n_layers=2, d_mlp=8)
    assert sets["Openness_high"].index.tolist() == [2, 5]  # sorted by diff descending
    assert sets["Openness_low"].layer.tolist() == [1]


def test_import_refuses_code_and_bad_rows(tmp_path):
    (tmp_path / "Openness_dict.json").write_text("{'0': __import__('os').system('true')}")
    with pytest.raises(UserError, match="not valid JSON"):
        import_reference(tmp_path)
    (tmp_path / "Openness_dict.json").write_text(json.dumps({"0": [[0, 1, 0.1]]}))
    with pytest.raises(UserError, match="is not \\[layer, index"):
        import_reference(tmp_path)


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared reference data absent")
def test_import_published_llama3_sets():
    sets = import_reference(REFERENCE / "neuron_results_llama3_8b_instruct")
    counts = {k: len(v) for k, v in sets.items()}
    assert counts == {
        "Agreeableness_high": 21008,
        "Agreeableness_low": 21083,
        "Conscientiousness_high": 10278,
        "Conscientiousness_low": 16997,
        "Extraversion_high": 27427,
        "Extraversion_low": 24519,
        "Neuroticism_high": 19211,
        "Neuroticism_low": 16313,
    }
    ext = sets["Extraversion_high"]
    assert ext.n_layers == 32 and ext.d_mlp == 14336
    assert (ext.diff[:-1] >= ext.diff[1:]).all()
