"""Tensor parallelism on vLLM: two ranks (each its half of every MLP's neurons) give one rank's
answers, plain and induced under every keep rule, and the TransformerLens statistics."""

from __future__ import annotations

from npti_lens.vllm.engine import vllm_available
from tests.helpers import needs

pytestmark = needs("vLLM", vllm_available())

from npti_lens.method.protocol import load_protocol  # noqa: E402
from npti_lens.method.stats import Stats  # noqa: E402
from npti_lens.model.generation import GenerateConfig  # noqa: E402
from tests.helpers import QUESTIONS, build_tiny_vllm, random_pole_sets  # noqa: E402
from tests.vllm_oracles import answer_acts, explain_differences  # noqa: E402

GCFG = GenerateConfig(max_new_tokens=20, repetition_penalty=1.15)


def run(engine, hi, lo, prompts):
    npti, lens = load_protocol("npti"), load_protocol("lens")
    extras = {
        "plain": None,
        "keep 1": engine.induce_extra([(hi, lo)], npti.induce_config(gamma=3.0, keep_prob=1.0)),
        "bernoulli 0.5": engine.induce_extra(
            [(lo, hi)], npti.induce_config(gamma=4.0, keep_prob=0.5, seed=7)
        ),
        "exact 0.5": engine.induce_extra([(hi, lo)], lens.induce_config(gamma=4.0, keep_prob=0.5, seed=7)),
    }
    answers = {k: [g.answer_ids for g in engine.generate(prompts, GCFG, extra=e)] for k, e in extras.items()}
    stats = Stats.zeros(engine.n_layers, engine.d_mlp, d_model=engine.cfg.d_model)
    engine.record([(p, a) for p, a in zip(prompts, answers["plain"], strict=True)], stats)
    return answers, stats


def test_two_ranks_equal_one(tmp_path):
    from npti_lens.model.load import load_model, model_id
    from npti_lens.model.sites import mlp_sites
    from npti_lens.vllm.engine import VLLMEngine

    folder = build_tiny_vllm("llama", tmp_path / "llama")
    tl = load_model(str(folder))
    sites = mlp_sites(tl)
    hi, lo = random_pole_sets(model_id(tl), sites.n_layers, sites.d_mlp, n=120)
    prompts = [load_protocol("npti").prompt(tl.tokenizer, "neutral", question=q).token_ids for q in QUESTIONS]
    results = {}
    for tp in (1, 2):
        with VLLMEngine(str(folder), tensor_parallel=tp) as engine:
            assert engine.tensor_parallel == tp
            results[tp] = run(engine, hi, lo, prompts)
    (one, stats_one), (two, stats_two) = results[1], results[2]
    assert two == one
    assert one["keep 1"] != one["plain"] and one["bernoulli 0.5"] != one["keep 1"]
    acts = answer_acts(tl, list(zip(prompts, one["plain"], strict=True)))
    ref = Stats.zeros(sites.n_layers, sites.d_mlp, d_model=int(tl.cfg.d_model))
    from npti_lens.method.recording import record_batch

    record_batch(tl, list(zip(prompts, one["plain"], strict=True)), ref)
    for got in (stats_one, stats_two):
        moved = explain_differences(ref, got, acts)
        assert moved <= 1e-4 * ref.n_tokens * ref.n_active.numel()
