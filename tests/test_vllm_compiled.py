"""NPTI's edit through vLLM's compilation (`VLLMEngine(compile=True)`, `--compile`): the edit is a
custom op in every MLP activation (`npti_lens.vllm.ops`), so the compiled model edits as the eager
one does. Oracle: the TransformerLens loop, token for token, plain and induced. Control: a Python
forward hook on an activation module, which the eager engine runs and the compiled one skips, so
these engines really run compiled code. On a CPU vLLM 0.32 compiles the whole model with Inductor
(DYNAMO_TRACE_ONCE, no CUDA graphs); the piecewise CUDA-graph split is GPU-only (not run here)."""

from __future__ import annotations

import os

import pytest

from npti_lens.vllm.engine import vllm_available
from tests.helpers import needs

pytestmark = needs("vLLM", vllm_available())

from npti_lens.core.errors import UserError  # noqa: E402
from npti_lens.method.protocol import load_protocol  # noqa: E402
from npti_lens.model.generation import GenerateConfig  # noqa: E402
from npti_lens.workflows.answers import Condition, answer  # noqa: E402
from tests.helpers import QUESTIONS, tiny_vllm_with_sets  # noqa: E402

GCFG = GenerateConfig(max_new_tokens=16, repetition_penalty=1.15, batch_size=4)
FAMILIES = ("llama", "gemma2")  # SiluAndMul and GeluAndMul (tanh)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """{family: (TransformerBridge, compiled VLLMEngine, high, low)}, and llama's eager engine."""
    from npti_lens.vllm.engine import VLLMEngine

    # the probe below crosses to the workers as a pickled function (test only)
    old = os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION")
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    out, made = {}, []
    root = tmp_path_factory.mktemp("vllm_compiled")
    try:
        for family in FAMILIES:
            folder, tl, hi, lo = tiny_vllm_with_sets(family, root / family)
            made.append(VLLMEngine(str(folder), compile=True))
            out[family] = (tl, made[-1], hi, lo)
            if family == "llama":
                made.append(VLLMEngine(str(folder)))
                out["eager"] = made[-1]
        yield out
    finally:
        for engine in made:
            engine.close()
        if old is None:
            os.environ.pop("VLLM_ALLOW_INSECURE_SERIALIZATION", None)
        else:
            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = old


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_answers_plain_and_induced_equal_the_transformerlens_loop(engines, family):
    tl, engine, hi, lo = engines[family]
    npti = load_protocol("npti").induce_config(gamma=3.0, keep_prob=1.0)
    conditions = {
        "plain": Condition.none(),
        "npti rules, high": Condition.npti([(hi, lo)], npti),
        "lens rules, low": Condition.npti(
            [(lo, hi)], load_protocol("lens").induce_config(gamma=6.0, keep_prob=1.0)
        ),
    }
    got = {}
    for name, cond in conditions.items():
        ref = answer(tl, QUESTIONS, cond, GCFG, protocol="lens", token_ids=True)
        rows = answer(engine, QUESTIONS, cond, GCFG, protocol="lens", token_ids=True)
        assert [{k: v for k, v in r.items() if k != "engine"} for r in rows] == ref, name
        got[name] = [r["answer_token_ids"] for r in rows]
    assert got["npti rules, high"] != got["plain"]  # the edit changes answers: equality means something


def test_a_compiled_mixed_batch_equals_the_eager_engine(engines):
    """Two poles, two gammas, the paper's keep share 0.5 (vLLM's hashed draws, which the TL loop
    does not make) and a plain request in one batch."""
    tl, engine, hi, lo = engines["llama"]
    eager = engines["eager"]
    proto = load_protocol("npti")
    prompts = [proto.prompt(engine.tokenizer, "neutral", question=q).token_ids for q in QUESTIONS]
    cfgs = [proto.induce_config(gamma=1.5, keep_prob=1.0), proto.induce_config(gamma=4.0, seed=3), None]
    sets = [[(hi, lo)], [(lo, hi)], None]
    extras = {
        e: [None if c is None else e.induce_extra(s, c) for s, c in zip(sets, cfgs, strict=True)]
        for e in (engine, eager)
    }
    per = {e: [extras[e][i % 3] for i in range(len(prompts))] for e in extras}
    compiled = [g.answer_ids for g in engine.generate(prompts, GCFG, extra=per[engine])]
    assert compiled == [g.answer_ids for g in eager.generate(prompts, GCFG, extra=per[eager])]
    assert compiled != [g.answer_ids for g in engine.generate(prompts, GCFG)]


def test_the_compiled_engine_runs_compiled_code(engines):
    """A forward hook on layer 0's activation: the eager engine runs it at every forward, the
    compiled one never (its modules' Python is traced once), while the op edits there."""

    def arm(worker):  # runs in each worker
        act = worker.model_runner.model.model.layers[0].mlp.act_fn
        worker.probe_hits = 0

        def hit(module, inputs, output):
            worker.probe_hits += 1

        worker.probe_handle = act.register_forward_hook(hit)
        return worker._npti["compiled"]

    def read(worker):
        worker.probe_handle.remove()
        return worker.probe_hits

    gcfg = GenerateConfig(max_new_tokens=4)
    for engine, compiled in ((engines["llama"][1], True), (engines["eager"], False)):
        assert engine.llm.collective_rpc(arm) == [compiled]
        engine.generate([[1, 2, 3]], gcfg)
        hits = engine.llm.collective_rpc(read)[0]
        assert (hits == 0) if compiled else (hits >= 4), (compiled, hits)


def test_a_compiled_engine_refuses_to_record(engines):
    from npti_lens.method.stats import Stats

    engine = engines["llama"][1]
    with pytest.raises(UserError, match="eager vLLM"):
        engine.record([([1, 2], [3, 4])], Stats.zeros(engine.n_layers, engine.d_mlp))


def test_vllms_piecewise_split_cuts_the_graph_at_the_edit():
    """The GPU path's structure, built on the CPU with vLLM's own `split_graph` on the graph Dynamo
    captures: `npti::act` is a piece of its own (run eagerly between CUDA graphs, as attention is),
    the activation before it and the projection after it are pieces that graphs capture; and the
    split model still calls the worker's handler, with the activation's output, at run time."""
    import torch
    from vllm.compilation.backends import split_graph
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.activation import SiluAndMul

    from npti_lens.vllm import ops
    from npti_lens.vllm.args import compile_settings

    with set_current_vllm_config(VllmConfig()):
        act = SiluAndMul()  # what a Llama MLP builds in our workers
    assert type(act).__name__ == "NPTISiluAndMul" and ops.base_name(act) == "SiluAndMul"

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.act, self.down = torch.nn.Linear(8, 16), act, torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.down(self.act(self.up(x)))

    graphs = []
    mlp, x = MLP(), torch.randn(3, 8)
    torch.compile(mlp, backend=lambda gm, inputs: graphs.append((gm, inputs)) or gm.forward)(x)
    gm, inputs = graphs[0]  # Dynamo's graph and its inputs (the parameters, lifted, and x)
    split, pieces = split_graph(gm, compile_settings()["compilation_config"]["splitting_ops"])
    calls = [[str(n.target) for n in p.graph.graph.nodes if n.op == "call_function"] for p in pieces]
    alone = [c for p, c in zip(pieces, calls, strict=True) if p.is_splitting_graph]
    assert alone == [["npti.act"]] and len(pieces) == 3
    assert any("linear" in t for t in calls[-1]) and not any("npti" in t for c in calls[:1] for t in c)
    seen = []
    ops.claim(act, lambda inp, out: (seen.append(out.clone()), out.mul_(0.0)))
    try:
        with torch.no_grad():
            got = split(*inputs)
            got = got[0] if isinstance(got, (tuple, list)) else got
            want = mlp.down(torch.zeros(3, 8))  # the handler zeroed the activation in place
    finally:
        ops.release(act)
    assert len(seen) == 1 and seen[0].shape == (3, 8)
    assert torch.allclose(got, want)
