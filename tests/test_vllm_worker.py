"""The vLLM worker's hot path without vLLM: no host sync (run on PyTorch's meta device, where any
read of a value back to the host raises), the hooks-fired check, the refused configurations, and
the memory the statistics take, as allocated."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from npti_lens.method.induction import InduceConfig, plan_layers
from npti_lens.vllm.args import REFUSED, rank_plan, refusal
from npti_lens.vllm.recording import Site
from npti_lens.vllm.worker import GATES, NPTIWorkerExtension, _Step
from tests.helpers import random_pole_sets, require

META = torch.device("meta")
L, D = 3, 256


def bare(**state) -> NPTIWorkerExtension:
    ext = NPTIWorkerExtension.__new__(NPTIWorkerExtension)  # no vLLM: the hooks' state by hand
    ext._npti = {"nonfinite": None, "stats": {}, "counted": {}, "n_layers": L, **state}
    return ext


def plans(tp: int, device: torch.device, cfg: InduceConfig):
    hi, lo = random_pole_sets("m", L, D * tp, n=300)
    full = plan_layers(L, D * tp, [(hi, lo)], cfg, "cpu", torch.float32)
    return {layer: rank_plan(p, 0, D, device) for layer, p in full.items()}


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("keep", ["bernoulli", "exact"])
def test_the_edit_and_the_statistics_never_read_the_device(tp, keep):
    """Everything a hook does per layer runs on meta tensors: no nonzero, item, bincount or mask index."""
    cfg = InduceConfig(gamma=2.0, keep=keep, keep_prob=0.7)
    site = Site(layer=1, gated=True, d_local=D, gate=torch.nn.functional.silu)
    rows, positions = (
        torch.empty(5, dtype=torch.long, device=META),
        torch.empty(5, dtype=torch.long, device=META),
    )
    x, out = torch.empty(9, 2 * D, device=META), torch.empty(9, D, device=META)
    plan = plans(tp, META, cfg)[1]
    assert (plan.mine is None) == (tp == 1)
    ext = bare()
    ext._npti_edit(site, plan, cfg, rows, positions, x, out)
    assert ext._npti["nonfinite"].device == META  # a flag on the device, read after the batch
    ext._npti_record("b", site, rows, x, out)
    assert ext._npti["stats"]["b"]["hist"].device == META


def test_the_meta_device_catches_a_host_sync():
    """The check above can fail: what the hot path used to do raises on meta tensors."""
    idx = torch.empty(10, dtype=torch.long, device=META)
    with pytest.raises(NotImplementedError):
        torch.bincount(idx)
    with pytest.raises(NotImplementedError):
        torch.empty(4, 6, device=META)[..., torch.empty(6, dtype=torch.bool, device=META)]


def test_the_edit_on_the_cpu_equals_the_plain_rule():
    """The same code on real tensors: act(gate) shifted and clamped, times up, only in the plan's columns."""
    torch.manual_seed(0)
    cfg = InduceConfig(gamma=2.0, keep_prob=1.0, clamp_order="before")
    plan = plans(1, torch.device("cpu"), cfg)[0]
    gelu = GATES["GeluAndMul"](SimpleNamespace(approximate="tanh"))
    site = Site(layer=0, gated=True, d_local=D, gate=gelu)
    x = torch.randn(6, 2 * D)
    out = gelu(x[:, :D]) * x[:, D:]
    want = out.clone()
    rows = torch.tensor([1, 4])
    a = gelu(x[rows][:, plan.cols])
    a = torch.where(plan.part.clamp, a.clamp(max=0), a) + plan.part.delta * plan.part.is_target
    want[rows[:, None], plan.cols] = a * x[rows][:, plan.cols + D]
    bare()._npti_edit(site, plan, cfg, rows, torch.tensor([7, 8]), x, out)
    assert torch.allclose(out, want, atol=1e-6)


def test_a_forward_whose_activations_did_not_all_reach_the_edit_fails_loudly():
    ext = bare(step=object(), calls=2)
    with pytest.raises(RuntimeError, match=r"2 times in this forward, not once for each of 3 layers"):
        ext._npti_post_hook(torch.nn.Module(), (), None)
    with pytest.raises(RuntimeError, match=r"4 times"):  # an activation of something else counted in
        bare(step=object(), calls=4)._npti_post_hook(torch.nn.Module(), (), None)
    bare(step=object(), calls=3)._npti_post_hook(torch.nn.Module(), (), None)
    bare(step=None, calls=0)._npti_post_hook(torch.nn.Module(), (), None)  # nothing asked of this forward


def test_the_nth_activation_of_a_forward_is_layer_n():
    """One shared activation module (GPT-2's) or one per layer: the edit goes by call order."""
    cfg = InduceConfig(gamma=3.0, keep_prob=1.0)
    plan = plans(1, torch.device("cpu"), cfg)
    sites = [Site(layer=i, gated=True, d_local=D, gate=torch.nn.functional.silu) for i in range(L)]
    ext = bare(sites=sites, calls=0)
    seen = []
    ext._npti_edit = lambda site, p, c, rows, pos, x, out: seen.append((site.layer, p is plan[site.layer]))
    ext._npti["step"] = _Step(records=[], edits=[(torch.tensor([0]), torch.tensor([3]), cfg, plan)])
    x, out = torch.randn(2, 2 * D), torch.randn(2, D)
    for _ in range(L):
        ext._npti_on_act(x, out)
    assert [layer for layer, _ in seen] == [layer for layer in range(L) if plan.get(layer) is not None]
    assert all(same for _, same in seen) and ext._npti["calls"] == L


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("enforce_eager", False),
        ("compilation_config", {"cudagraph_mode": "FULL_AND_PIECEWISE"}),
        ("compilation_config", {"cudagraph_mode": "PIECEWISE", "splitting_ops": ["vllm::unified_attention"]}),
        ("enable_prefix_caching", True),
        ("speculative_config", {"method": "ngram", "num_speculative_tokens": 3}),
        ("pipeline_parallel_size", 2),
        ("enable_dbo", True),
        ("ubatch_size", 2),
        ("kv_transfer_config", {"kv_connector": "x"}),
        ("quantization", "fp8"),
    ],
)
def test_every_configuration_the_hooks_cannot_work_under_is_refused(name, value):
    assert {n for n, _, _ in REFUSED} | {"compilation_config"} >= {name}
    ok = {
        "enforce_eager": True,
        "enable_prefix_caching": False,
        "pipeline_parallel_size": 1,
        "quantization": None,
    }
    assert refusal(ok) is None
    why = refusal({**ok, name: value})
    assert why is not None and name in why


def test_compiled_with_the_edit_as_a_split_point_is_taken():
    """--no-enforce-eager alone is refused; with npti's compilation config (piecewise graphs split
    at npti::act) it is not, and that config keeps vLLM's own default split points (checked
    against vLLM's where it imports, as in CI)."""
    from npti_lens.vllm.args import OP, SPLIT_DEFAULTS, compile_settings

    settings = compile_settings()
    assert refusal(settings) is None and refusal({"enforce_eager": False}) is not None
    splits = settings["compilation_config"]["splitting_ops"]
    assert splits == [*SPLIT_DEFAULTS, OP]
    from npti_lens.vllm.engine import vllm_available

    require("vLLM", vllm_available())  # the oracle: the split points vLLM itself sets when none are given
    from vllm.config import CompilationConfig

    cc = CompilationConfig(mode=3)
    cc.set_splitting_ops_for_v1("allgather_reducescatter")
    assert list(SPLIT_DEFAULTS) == cc.splitting_ops


def test_weight_only_quantisation_is_not_refused():
    assert refusal({"quantization": "awq"}) is None


def test_the_memory_reserved_for_statistics_is_what_a_worker_allocates():
    from npti_lens.method.stats import CHUNK_ELEMENTS
    from npti_lens.vllm.resources import stats_bytes

    ext = bare()
    site = Site(layer=0, gated=True, d_local=D, gate=torch.nn.functional.silu)
    x = torch.randn(4, 2 * D)
    ext._npti_record("b", site, torch.arange(4), x, torch.randn(4, D))
    held = ext._npti["stats"]["b"]
    resid = L * 64 * 8  # the residual sums a block hook adds (d_model 64)
    allocated = sum(t.nbytes for t in held.values() if isinstance(t, torch.Tensor)) + resid
    hf = SimpleNamespace(num_hidden_layers=L, intermediate_size=2 * D, hidden_size=64)
    assert stats_bytes(hf, tensor_parallel=2) - CHUNK_ELEMENTS * 20 == allocated
    assert held["n_tokens"] == 4 and ext.npti_counted("b") == 4
