"""Data: question and persona files, PersonalityBench through datasets."""

from __future__ import annotations

import json

import pytest

from npti_lens.core.errors import UserError
from npti_lens.inputs.questions import load_personality_bench, load_personas, load_questions
from tests.helpers import REFERENCE, write_data


def test_local_bench_layout_through_datasets(tmp_path):
    qdir, _ = write_data(tmp_path / "bench", traits=("Openness", "Neuroticism"))
    (tmp_path / "bench" / "test").mkdir()
    for t in ("Openness", "Neuroticism"):
        (qdir / f"{t}.json").rename(tmp_path / "bench" / "test" / f"{t}.json")
    rows = load_personality_bench(tmp_path / "bench", "test", ["Openness", "Neuroticism"])
    assert [len(v) for v in rows.values()] == [7, 7]
    assert (
        rows["Openness"][0]["question"]
        == load_questions(tmp_path / "bench" / "test" / "Openness.json")[0].text
    )
    with pytest.raises(UserError, match="has no Extraversion.json"):
        load_personality_bench(tmp_path / "bench", "test", ["Extraversion"])
    with pytest.raises(UserError, match="search or test"):
        load_personality_bench(tmp_path / "bench", "train")


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared reference data absent")
def test_reference_test_split_and_personas():
    rows = load_personality_bench(REFERENCE, "test")
    assert {t: len(v) for t, v in rows.items()} == {
        "Openness": 90,
        "Conscientiousness": 89,
        "Extraversion": 90,
        "Agreeableness": 90,
        "Neuroticism": 100,
    }
    personas = load_personas(REFERENCE / "description.json.gz")
    assert len(personas) == 10 and all(len(v) == 80 for v in personas.values())
    assert json.dumps(personas[("Extraversion", "high")][0]).startswith('"You are an outgoing')


def test_shipped_sample_set_loads_everywhere(tmp_path):
    from npti_lens.cli import main
    from npti_lens.core.constants import TRAITS
    from npti_lens.inputs.inventory import load_inventory
    from npti_lens.inputs.questions import SAMPLE_DIR, SAMPLE_PERSONAS

    search = load_personality_bench(SAMPLE_DIR, "search")
    test = load_personality_bench(SAMPLE_DIR, "test")
    facets = {(it.domain, it.facet_name) for it in load_inventory()}
    every = [q["question"] for t in TRAITS for q in search[t] + test[t]]
    assert len(every) == len(set(every))  # no question twice, across traits and splits
    for t in TRAITS:
        assert len(search[t]) == 16 and len(test[t]) == 8
        # every question names one of its trait's six facets, and every facet has questions
        assert {q["tag"] for q in search[t] + test[t]} == {f for d, f in facets if d == t}
    personas = load_personas(SAMPLE_PERSONAS)
    assert len(personas) == 10 and all(len(v) == 10 and len(set(v)) == 10 for v in personas.values())
    assert main(["data", "sample", "--out", str(tmp_path / "s")]) == 0
    assert load_personas(tmp_path / "s" / "personas.jsonl") == personas
    assert (
        load_questions(tmp_path / "s" / "test" / "Openness.json")[0].text == test["Openness"][0]["question"]
    )
    assert main(["data", "sample", "--out", str(tmp_path / "s")]) == 2  # never over earlier files
