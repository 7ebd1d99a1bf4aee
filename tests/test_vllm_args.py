"""What needs no vLLM of the vLLM engine: request arguments, keep draws, the tensor-parallel split
of a plan, and clear errors where vLLM is missing or a flag does not fit the engine."""

from __future__ import annotations

import pytest
import torch

from npti_lens.method.induction import InduceConfig, counter_uniform, plan_layers
from npti_lens.vllm.args import induce_config, induction_args, induction_key, rank_plan
from tests.helpers import random_pole_sets, require


def test_request_arguments():
    assert induction_args(None) == {} and induction_args({"other": 1}) == {}
    args = induction_args(
        {"npti_trait": "Extraversion", "npti_pole": "low", "npti_gamma": 2, "npti_keep": "exact"}
    )
    assert induction_key(args, "sets") == "sets/Extraversion/low"
    assert induction_key({"npti_induction": "k"}, "sets") == "k"
    assert induction_key({}, "sets") is None
    cfg = induce_config(args, InduceConfig(keep_prob=0.8))
    assert (cfg.gamma, cfg.keep, cfg.keep_prob) == (2, "exact", 0.8)
    for bad, word in [
        ({"npti_trait": "Extra", "npti_pole": "low"}, "npti_trait"),
        ({"npti_trait": "Extraversion", "npti_pole": "middle"}, "npti_pole"),
        ({"npti_gamma": float("nan")}, "npti_gamma"),
        ({"npti_gamma": True}, "npti_gamma"),
        ({"npti_keep_prob": 1.5}, "npti_keep_prob"),
        ({"npti_keep": "some"}, "npti_keep"),
        ({"npti_seed": 1.5}, "npti_seed"),
        ({"npti_activate": "no"}, "npti_activate"),
        ({"npti_gammma": 1}, "unknown npti argument"),
    ]:
        with pytest.raises(ValueError, match=word):
            induction_args(bad)


def test_keep_draws_are_uniform_independent_and_batch_free():
    u = counter_uniform(0, torch.arange(4000), 3, torch.arange(250))
    assert abs(float((u <= 0.9).float().mean()) - 0.9) < 0.002
    assert abs(float(u.mean()) - 0.5) < 0.002
    # neighbouring positions, layers and seeds are uncorrelated
    for other in (counter_uniform(0, torch.arange(1, 4001), 3, torch.arange(250)),
                  counter_uniform(0, torch.arange(4000), 4, torch.arange(250)),
                  counter_uniform(1, torch.arange(4000), 3, torch.arange(250))):  # fmt: skip
        assert abs(float(torch.corrcoef(torch.stack([u.flatten(), other.flatten()]))[0, 1])) < 0.01
    # a row's draws depend on its position only, not on the other rows of the batch
    assert torch.equal(counter_uniform(0, torch.tensor([17, 5]), 3, torch.arange(250))[1], u[5])


def test_a_plan_split_over_ranks_is_the_whole_plan():
    hi, lo = random_pole_sets("m", 3, 256, n=200)
    plans = plan_layers(3, 256, [(hi, lo)], InduceConfig(gamma=2.0), "cpu", torch.float32)
    for layer, plan in plans.items():
        parts = [rank_plan(plan, r, 128, torch.device("cpu")) for r in range(2)]
        assert torch.equal(torch.cat([p.part.idx for p in parts]), plan.idx)
        assert torch.equal(torch.cat([p.part.delta for p in parts]), plan.delta)
        for r, p in enumerate(parts):
            assert torch.equal(p.cols + 128 * r, p.part.idx) and bool(((p.cols >= 0) & (p.cols < 128)).all())
            assert torch.equal(p.full.idx, plan.idx), layer  # keep draws made over the whole layer


def test_engine_flags_fail_clearly(monkeypatch, capsys, tmp_path):
    import npti_lens.vllm.engine as ve
    from npti_lens.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.jsonl").write_text('{"question": "how are you ?"}\n')

    monkeypatch.setattr(ve, "vllm_available", lambda: "ModuleNotFoundError: No module named 'vllm'")
    cmd = ["generate", "--model", "organism", "--questions", "q.jsonl", "--out", "o.jsonl"]
    assert main([*cmd, "--engine", "vllm"]) == 2
    assert "--engine vllm: vLLM does not import here" in capsys.readouterr().err
    for flags, word in (
        (["--engine", "fast"], "--engine"),
        (["--tensor-parallel", "2"], "--tensor-parallel"),
        (["--compile"], "--compile: only with --engine vllm"),
    ):
        assert main([*cmd, *flags]) == 2
        assert word in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    # a search records statistics, which compiled code cannot: refused before any model is loaded
    (tmp_path / "qs").mkdir()
    search = ["search", "--model", "organism", "--questions", "qs", "--personas", "p.jsonl", "--out", "run"]
    assert main([*search, "--engine", "vllm", "--compile"]) == 2
    assert "--compile: this command records search statistics" in capsys.readouterr().err
    assert not (tmp_path / "run" / "stats").exists()


def test_serve_checks_its_neuron_folders(tmp_path):
    from npti_lens.core.constants import pole_name
    from npti_lens.core.errors import UserError
    from npti_lens.vllm.serve import neuron_folders

    hi, lo = random_pole_sets("m", 3, 256)
    hi.save(tmp_path / "sets" / pole_name(hi.trait, hi.pole))
    with pytest.raises(UserError, match="but not Extraversion"):
        neuron_folders([str(tmp_path / "sets")])
    lo.save(tmp_path / "sets" / pole_name(lo.trait, lo.pole))
    assert neuron_folders([f"a={tmp_path / 'sets'}"]) == {"a": str((tmp_path / "sets").resolve())}
    assert list(neuron_folders([str(tmp_path / "sets")])) == ["sets"]
    for bad, word in (([str(tmp_path / "none")], "not a folder"), ([str(tmp_path)], "holds no"),
                      ([f"a={tmp_path / 'sets'}", f"a={tmp_path / 'sets'}"], "given twice")):  # fmt: skip
        with pytest.raises(UserError, match=word):
            neuron_folders(bad)


@pytest.mark.parametrize(
    ("bad", "word"),
    [
        ({"npti_seed": 2**62}, "npti_seed"),  # once overflowed int64 inside the forward
        ({"npti_seed": -1}, "npti_seed"),
        ({"npti_gamma": 1e300}, "npti_gamma"),
        ({"npti_keep_prob": -0.1}, "npti_keep_prob"),
        ({"npti_positions": "some"}, "npti_positions"),
        ({"npti_clamp_layers": 3}, "npti_clamp_layers"),
        ({"npti_neurons": ["a"]}, "npti_neurons"),
        ({"npti_induction": ""}, "npti_induction"),
        ({"npti_record": 7}, "npti_record"),
        ({"npti_record_from": -3}, "npti_record_from"),
        ({"npti_record_from": 1.5}, "npti_record_from"),
    ],
)
def test_every_request_argument_is_bounded(bad, word):
    with pytest.raises(ValueError, match=word):
        induction_args(bad)


def test_the_largest_seed_allowed_hashes_without_overflow():
    from npti_lens.core.errors import UserError
    from npti_lens.method.induction import SEED_MAX, check_config

    u = counter_uniform(SEED_MAX, torch.arange(3), 31, torch.arange(5))
    assert u.shape == (3, 5) and bool(((u >= 0) & (u < 1)).all())
    check_config(InduceConfig(seed=SEED_MAX))
    with pytest.raises(UserError, match="seed"):
        check_config(InduceConfig(seed=SEED_MAX + 1))


@pytest.mark.parametrize(
    ("flag", "word"),
    [
        ("--no-enforce-eager", "enforce_eager"),
        ("--enable-prefix-caching", "enable_prefix_caching"),
        ("--pipeline-parallel-size=2", "pipeline_parallel_size"),
        ('--speculative-config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}',
         "speculative_config"),
        ("--quantization=fp8", "quantization"),
    ],
)  # fmt: skip
def test_serve_refuses_a_vllm_arg_that_undoes_the_hooks(flag, word):
    """Once appended after our flags and silently winning (the server served the plain model)."""
    from npti_lens.core.errors import UserError
    from npti_lens.vllm.engine import vllm_available

    require("vLLM", vllm_available())
    from npti_lens.vllm.serve import vllm_args

    kw = {"host": "127.0.0.1", "port": 1, "dtype": "float32", "tensor_parallel": 1, "kv_cache_gib": 1.0}
    assert vllm_args("m", **kw).enforce_eager is True
    with pytest.raises(UserError, match=word):
        vllm_args("m", **kw, extra=[flag])


def test_serve_compile_splits_the_graphs_at_the_edit():
    """--compile: vLLM's compilation with piecewise graphs split at npti::act; a --vllm-arg asking
    for full CUDA graphs on top is refused (they would replay the edit, not run it)."""
    from npti_lens.core.errors import UserError
    from npti_lens.vllm.engine import vllm_available

    require("vLLM", vllm_available())
    from npti_lens.vllm.args import OP
    from npti_lens.vllm.serve import vllm_args

    kw = {"host": "127.0.0.1", "port": 1, "dtype": "float32", "tensor_parallel": 1, "kv_cache_gib": 1.0}
    args = vllm_args("m", **kw, compile=True)
    cc = args.compilation_config
    assert args.enforce_eager is False and int(cc.mode) == 3 and str(cc.cudagraph_mode).endswith("PIECEWISE")
    assert OP in cc.splitting_ops and "vllm::unified_attention_with_output" in cc.splitting_ops
    for extra in (['--compilation-config={"cudagraph_mode": "FULL_AND_PIECEWISE"}'],
                  ['--compilation-config={"cudagraph_mode": "PIECEWISE", "splitting_ops": []}']):  # fmt: skip
        with pytest.raises(UserError, match="compilation_config"):
            vllm_args("m", **kw, compile=True, extra=extra)


def test_the_engine_refuses_keywords_that_undo_the_hooks(tmp_path):
    from npti_lens.core.errors import UserError
    from npti_lens.vllm.engine import VLLMEngine, vllm_available

    require("vLLM", vllm_available())
    from tests.helpers import build_tiny_vllm

    folder = build_tiny_vllm("llama", tmp_path / "m")
    for kw in ({"enable_prefix_caching": True}, {"enforce_eager": False}):
        with pytest.raises(UserError, match=next(iter(kw))):
            VLLMEngine(str(folder), **kw)


def test_the_engine_refuses_a_shared_folder_it_cannot_write(tmp_path):
    from npti_lens.core.errors import UserError
    from npti_lens.vllm.engine import VLLMEngine, vllm_available

    require("vLLM", vllm_available())
    from tests.helpers import build_tiny_vllm

    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="NPTI_SHARED_DIR"):
        VLLMEngine(str(build_tiny_vllm("llama", tmp_path / "m")), shared_dir=tmp_path / "f" / "sub")
