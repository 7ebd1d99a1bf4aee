"""Search: answers + statistics per pole, checkpoint and resume to identical numbers, run guards."""

from __future__ import annotations

import json

import pytest
import torch

import npti_lens.workflows.search as search_mod
from npti_lens.core.errors import UserError
from npti_lens.method.stats import Stats, stats_path
from npti_lens.model.generation import GenerateConfig
from npti_lens.workflows.search import SearchConfig, answers_path, run_search
from tests.helpers import write_data

GCFG = GenerateConfig(max_new_tokens=5, batch_size=2, repetition_penalty=1.15)


def _equal(a: Stats, b: Stats) -> bool:
    return (
        a.n_tokens == b.n_tokens
        and torch.equal(a.n_active, b.n_active)
        and torch.equal(a.hist, b.hist)
        and torch.equal(a.sum, b.sum)
        and torch.equal(a.sum_sq, b.sum_sq)
    )


def test_resume_after_kill_gives_identical_statistics(tiny_models, tmp_path, monkeypatch):
    model = tiny_models["llama"]
    qdir, personas = write_data(tmp_path, traits=("Extraversion", "Openness"))
    scfg = SearchConfig(traits="Extraversion,Openness", checkpoint_every=1)
    full = run_search(model, qdir, personas, tmp_path / "full", scfg, GCFG)

    calls = {"n": 0}
    real = search_mod.record_batch

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # 2nd batch of the 2nd pole (4 batches a pole), its answers written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(search_mod, "record_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        run_search(model, qdir, personas, tmp_path / "killed", scfg, GCFG)
    monkeypatch.setattr(search_mod, "record_batch", real)
    # The kill also cut an answer line in half: resume must cope.
    apath = answers_path(tmp_path / "killed", "Extraversion", "low")
    assert len(apath.read_text().splitlines()) == 4  # answers run ahead of the checkpoint
    apath.write_text(apath.read_text() + '{"question": "cut')
    partial = Stats.load(stats_path(tmp_path / "killed", "Extraversion", "low"))
    assert partial.meta["n_questions"] == 2 and not partial.meta.get("complete")
    resumed = run_search(model, qdir, personas, tmp_path / "killed", scfg, GCFG, resume=True)
    assert full.keys() == resumed.keys()
    for name in full:
        assert _equal(full[name], resumed[name]), name
    for trait, pole in (("Extraversion", "high"), ("Extraversion", "low"), ("Openness", "low")):
        a = answers_path(tmp_path / "full", trait, pole).read_text()
        b = answers_path(tmp_path / "killed", trait, pole).read_text()
        assert a == b


def test_answers_and_stats_layout(tiny_models, tmp_path):
    model = tiny_models["gpt2"]
    qdir, personas = write_data(tmp_path)
    stats = run_search(
        model, qdir, personas, tmp_path / "run", SearchConfig(traits="Extraversion", limit=3), GCFG
    )
    rows = [
        json.loads(x) for x in answers_path(tmp_path / "run", "Extraversion", "high").read_text().splitlines()
    ]
    assert len(rows) == 3
    assert {"question", "persona", "prompt", "answer", "answer_token_ids", "trait", "pole", "gamma"} <= rows[
        0
    ].keys()
    assert rows[0]["persona"] in rows[0]["prompt"]
    s = stats["Extraversion_high"]
    assert s.n_tokens == sum(len(r["answer_token_ids"]) for r in rows)
    meta = json.loads(stats_path(tmp_path / "run", "Extraversion", "high").with_suffix(".json").read_text())
    assert meta["n_layers"] == 3 and meta["d_mlp"] == 96 and meta["complete"] and meta["dataset_fingerprint"]


def test_run_folder_guards(tiny_models, tmp_path):
    model = tiny_models["gpt2"]
    qdir, personas = write_data(tmp_path)
    scfg = SearchConfig(traits="Extraversion", limit=2)
    run_search(model, qdir, personas, tmp_path / "run", scfg, GCFG)
    with pytest.raises(UserError, match="pass --resume"):
        run_search(model, qdir, personas, tmp_path / "run", scfg, GCFG)
    with pytest.raises(UserError, match="different run"):
        run_search(
            model,
            qdir,
            personas,
            tmp_path / "run",
            scfg,
            GenerateConfig(max_new_tokens=9, batch_size=2),
            resume=True,
        )
    with pytest.raises(UserError, match="other questions"):
        run_search(
            model,
            qdir,
            personas,
            tmp_path / "run",
            SearchConfig(traits="Extraversion", limit=3),
            GCFG,
            resume=True,
        )
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        run_search(model, qdir, personas, tmp_path / "junk", scfg, GCFG)
    assert (tmp_path / "junk" / "x.txt").read_text() == "keep me"
