"""Data: question and persona files, PersonalityBench through datasets."""

from __future__ import annotations

import json

import pytest

from npti_lens.data import load_personality_bench, load_personas, load_questions
from npti_lens.errors import UserError
from tests.conftest import REFERENCE, write_data


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
