"""Artifacts written before a move still load: one of each kind, stored in tests/data/artifacts by
an older npti_lens (see its README), read with today's code and held to what it recomputes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

STORED = Path(__file__).parent / "data" / "artifacts"


def test_a_stored_run_gives_its_stored_neuron_sets_and_direction_again(tmp_path):
    from npti_lens.method.directions import Direction, mean_difference
    from npti_lens.method.neurons import load_neuron_sets
    from npti_lens.method.selection import SelectConfig, select_run
    from npti_lens.method.stats import load_run_stats

    high = load_run_stats(STORED / "run", "Extraversion", "high")
    low = load_run_stats(STORED / "run", "Extraversion", "low")
    meta = json.loads((STORED / "run" / "stats" / "Extraversion_high.json").read_text())
    assert high.n_tokens == meta["n_tokens"] == 28 and tuple(high.n_active.shape) == (3, 96)
    assert int(high.hist.sum()) == 3 * 96 * high.n_tokens  # every token in one bin per neuron

    stored = load_neuron_sets(STORED / "neurons")
    params = json.loads((STORED / "neurons" / "Extraversion_high" / "cfg.json").read_text())["params"]
    again = select_run(STORED / "run", tmp_path / "neurons", SelectConfig(**params))
    assert sorted(stored) == sorted(again) == ["Extraversion_high", "Extraversion_low"]
    for name, ns in stored.items():
        assert len(ns.layer) == len(again[name].layer) > 0
        assert torch.equal(ns.layer, again[name].layer) and torch.equal(ns.index, again[name].index)
        assert torch.equal(ns.diff, again[name].diff)

    direction = Direction.load(STORED / "direction")
    fresh = mean_difference(high, low, trait="Extraversion", pole="high", model="llama")
    assert torch.allclose(direction.vectors, fresh.vectors)


def test_stored_scores_are_given_again_by_the_stored_classifier(tmp_path):
    from npti_lens.core.files import read_jsonl, read_summary
    from npti_lens.workflows.answers import read_answers
    from npti_lens.workflows.scoring import score_file

    rows = read_answers(STORED / "answers.jsonl")
    assert len(rows) == 2 and all(r["answer_token_ids"] for r in rows)
    stored = read_jsonl(STORED / "scores" / "scores.jsonl")
    assert read_summary(STORED / "scores" / "summary.csv")
    score_file(STORED / "answers.jsonl", tmp_path / "scores", "classifier", classifier=str(STORED / "judge"))
    again = read_jsonl(tmp_path / "scores" / "scores.jsonl")
    assert [r["trait_score"] for r in again] == pytest.approx([r["trait_score"] for r in stored])


def test_a_stored_control_and_judge_data_load():
    from npti_lens.evaluation.control import Control
    from npti_lens.judges.classifier import run_rows
    from npti_lens.workflows.judging import DATA_KIND

    path = STORED / "control.json"
    ctrl = Control.load(path)
    assert ctrl.to_json() == json.loads(path.read_text())
    assert ctrl.sees("Extraversion", "high") is True and ctrl.sees("Openness", "high") is None

    cfg = json.loads((STORED / "judge_data" / "run.json").read_text())
    assert cfg["kind"] == DATA_KIND == "npti_lens.judge_data"
    rows = run_rows(STORED / "judge_data", "Extraversion")
    assert len(rows) == 4 and {r["pole"] for r in rows} == {"high", "low"}
