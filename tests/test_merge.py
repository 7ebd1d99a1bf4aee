"""Data parallelism for the search: shards (`--shard i/N`) merged (`npti merge`) give the run an
unsharded search writes: the same answers and, batch for batch, the same statistics."""

from __future__ import annotations

import json

import pytest
import torch

from npti_lens.core.errors import UserError
from npti_lens.method.stats import load_run_stats
from npti_lens.model.generation import GenerateConfig
from npti_lens.workflows.merge import merge_runs
from npti_lens.workflows.search import SearchConfig, answers_path, parse_shard, run_search, shard_slice
from tests.helpers import write_data

GCFG = GenerateConfig(max_new_tokens=5, batch_size=3, repetition_penalty=1.15)


def test_shards_merged_equal_the_unsharded_run(tiny_models, tmp_path):
    model = tiny_models["llama"]
    qdir, personas = write_data(tmp_path, n=6)  # shards of 3 = batches of 3: the same batches
    run_search(model, qdir, personas, tmp_path / "whole", SearchConfig(traits="Extraversion"), GCFG)
    shards = []
    for i in range(2):
        shards.append(tmp_path / f"shard{i}")
        run_search(
            model, qdir, personas, shards[-1], SearchConfig(traits="Extraversion", shard=f"{i}/2"), GCFG
        )
    merge_runs(shards[::-1], tmp_path / "merged")  # any order
    for pole in ("high", "low"):
        a, b = (
            load_run_stats(tmp_path / "whole", "Extraversion", pole),
            load_run_stats(tmp_path / "merged", "Extraversion", pole),
        )
        assert a.n_tokens == b.n_tokens > 0
        for name in ("n_active", "hist", "sum", "sum_sq", "resid_sum", "up_sum"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert a.meta["dataset_fingerprint"] == b.meta["dataset_fingerprint"]
        assert b.meta["n_questions"] == 6 and b.meta["complete"]
        rows = [
            [
                json.loads(x)
                for x in answers_path(tmp_path / run, "Extraversion", pole).read_text().splitlines()
            ]
            for run in ("whole", "merged")
        ]
        assert rows[0] == rows[1]
        half = load_run_stats(shards[0], "Extraversion", pole)
        assert 0 < half.n_tokens < a.n_tokens
    with pytest.raises(UserError, match="not each of"):
        merge_runs([shards[0], shards[0]], tmp_path / "twice")
    with pytest.raises(UserError, match="not each of"):
        merge_runs([shards[1]], tmp_path / "half")
    with pytest.raises(UserError, match="not a shard"):
        merge_runs([tmp_path / "whole", shards[1]], tmp_path / "mixed")
    with pytest.raises(UserError, match="already holds a run"):
        merge_runs(shards, tmp_path / "merged")


def test_shard_specs():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)
    parts = [shard_slice(10, (i, 3)) for i in range(3)]
    assert [list(range(10))[p] for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
