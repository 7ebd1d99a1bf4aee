"""The vLLM engine against the TransformerLens loop (the oracle): answers token for token, plain and
induced, a mixed batch against each request alone, and a search's statistics. One vLLM engine per
model for the whole module (tiny Llama and Qwen2, head_dim 64, float32)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from npti_lens.vllm.engine import vllm_available
from tests.helpers import needs

pytestmark = needs("vLLM", vllm_available())

from npti_lens.method.protocol import load_protocol  # noqa: E402
from npti_lens.model.generation import GenerateConfig  # noqa: E402
from npti_lens.workflows.answers import Condition, answer  # noqa: E402
from tests.helpers import QUESTIONS, tiny_vllm_with_sets, write_data  # noqa: E402
from tests.vllm_oracles import answer_acts, explain_differences  # noqa: E402

GCFG = GenerateConfig(max_new_tokens=24, repetition_penalty=1.15, batch_size=4)
FAMILIES = ("llama", "qwen2", "gemma2")  # gemma2: GeluAndMul (tanh), not SiLU


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """{family: (TransformerBridge, VLLMEngine, high set, low set)}; the engines close at the end."""
    from npti_lens.vllm.engine import VLLMEngine

    out = {}
    root = tmp_path_factory.mktemp("vllm_models")
    try:
        for family in FAMILIES:
            folder, tl, hi, lo = tiny_vllm_with_sets(family, root / family)
            out[family] = (tl, VLLMEngine(str(folder)), hi, lo)
        yield out
    finally:
        for _, engine, _, _ in out.values():
            engine.close()


def test_both_engines_carry_the_same_model_facts(pairs):
    """One handle: what the stages read of a model is worked out once, the same on either engine."""
    from npti_lens.model.load import facts

    for family, (tl, engine, _, _) in pairs.items():
        assert facts(engine) == replace(facts(tl), engine="vllm"), family
        assert facts(tl) is facts(tl)


def strip(rows):
    return [{k: v for k, v in r.items() if k != "engine"} for r in rows]


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_and_induced_answers_equal_the_transformerlens_loop(pairs, family):
    tl, engine, hi, lo = pairs[family]
    npti = load_protocol("npti").induce_config(gamma=3.0, keep_prob=1.0)
    lens = load_protocol("lens").induce_config(
        gamma=6.0, keep_prob=1.0
    )  # exact keep, clamp after, all layers
    conditions = {
        "plain": Condition.none(),
        "npti rules, high": Condition.npti([(hi, lo)], npti),
        "lens rules, low": Condition.npti([(lo, hi)], lens),
        "shift only": Condition.npti([(hi, lo)], replace(npti, deactivate=False)),  # the ablations' parts
        "clamp only": Condition.npti([(hi, lo)], replace(npti, activate=False)),
    }
    got = {}
    for name, cond in conditions.items():
        ref = answer(tl, QUESTIONS, cond, GCFG, protocol="lens", token_ids=True)
        rows = answer(engine, QUESTIONS, cond, GCFG, protocol="lens", token_ids=True)
        assert all(r["engine"] == "vllm" for r in rows)
        assert strip(rows) == ref, name
        got[name] = [r["answer_token_ids"] for r in rows]
    # the inductions change answers (else equality would prove nothing about the edit)
    assert got["npti rules, high"] != got["plain"]
    assert got["lens rules, low"] != got["plain"]
    assert got["shift only"] != got["npti rules, high"] or got["clamp only"] != got["plain"]


def test_a_mixed_batch_equals_each_request_alone(pairs):
    tl, engine, hi, lo = pairs["llama"]
    proto = load_protocol("npti")
    prompts = [proto.prompt(engine.tokenizer, "neutral", question=q).token_ids for q in QUESTIONS]
    kinds = [
        engine.induce_extra([(hi, lo)], proto.induce_config(gamma=1.5, keep_prob=1.0)),
        engine.induce_extra([(lo, hi)], proto.induce_config(gamma=4.0, keep_prob=1.0)),
        None,
        engine.induce_extra([(hi, lo)], proto.induce_config(gamma=4.0, keep_prob=0.5, seed=3)),
    ]
    extras = [kinds[i % len(kinds)] for i in range(len(prompts))]
    mixed = engine.generate(prompts, GCFG, extra=extras)
    for i, p in enumerate(prompts):
        alone = engine.generate([p], GCFG, extra=extras[i])[0]
        assert alone.answer_ids == mixed[i].answer_ids, i
    # a keep share below 1 draws per (seed, position, layer, neuron): the same in any batch, and it matters
    full = engine.generate(
        prompts[3:4], GCFG, extra=engine.induce_extra([(hi, lo)], proto.induce_config(gamma=4.0))
    )
    half = engine.generate(prompts[3:4], GCFG, extra=kinds[3])
    assert half[0].answer_ids == mixed[3].answer_ids
    assert full[0].answer_ids != half[0].answer_ids


def test_answer_sets_batch_every_set_on_the_engine_as_each_alone(pairs, tmp_path):
    """`answer_sets` sends the missing sets as one batch of mixed conditions and stages (here plain,
    two inductions, a P2 prompt) and gets, set by set, the rows `answer()` gives for each alone on the
    TL loop; sets already on disk are read back, not answered again."""
    from npti_lens.workflows.answers import AnswerJob, answer_sets

    tl, engine, hi, lo = pairs["llama"]
    proto = load_protocol("npti")
    icfg = proto.induce_config(gamma=3.0, keep_prob=1.0)
    neutral, plain = GCFG, replace(GCFG, repetition_penalty=1.0)
    jobs = [
        AnswerJob("none", QUESTIONS, Condition.none("Extraversion"), neutral),
        AnswerJob("high", QUESTIONS, Condition.npti([(hi, lo)], icfg), neutral),
        AnswerJob("low", QUESTIONS, Condition.npti([(lo, hi)], icfg), neutral),
        AnswerJob("p2", QUESTIONS, Condition.baseline("p2", "Extraversion", "high", ["party friends"] * len(QUESTIONS)), plain),
    ]  # fmt: skip
    calls = {"n": 0}
    real = engine.generate

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    engine.generate = counting
    try:
        got = answer_sets(engine, jobs, tmp_path, protocol=proto)
        assert calls["n"] == 2  # two sampling configurations: two batches
        for j in jobs:
            ref = answer(tl, j.questions, j.condition, j.gcfg, protocol=proto)
            assert strip(got[j.key]) == ref, j.key
        assert got["high"] != got["none"]
        again = answer_sets(engine, jobs, tmp_path, protocol=proto)
        assert calls["n"] == 2 and again == got  # read back from the files
    finally:
        engine.generate = real


@pytest.mark.parametrize("family", FAMILIES)
def test_search_statistics_equal_teacher_forcing_in_transformerlens(pairs, family, tmp_path):
    from npti_lens.method.stats import load_run_stats
    from npti_lens.workflows.search import SearchConfig, answers_path, run_search

    tl, engine, _, _ = pairs[family]
    qdir, personas = write_data(tmp_path / "data")
    scfg = SearchConfig(traits="Extraversion")
    gcfg = GenerateConfig(max_new_tokens=20, repetition_penalty=1.1, batch_size=4)
    run_search(tl, qdir, personas, tmp_path / "tl", scfg, gcfg, protocol="lens")
    run_search(engine, qdir, personas, tmp_path / "vllm", scfg, gcfg, protocol="lens")
    assert json.loads((tmp_path / "vllm" / "run.json").read_text())["engine"] == "vllm"
    for pole in ("high", "low"):
        a, b = (
            [
                json.loads(x)
                for x in answers_path(tmp_path / run, "Extraversion", pole).read_text().splitlines()
            ]
            for run in ("tl", "vllm")
        )
        assert strip(b) == a
        ref, got = (
            load_run_stats(tmp_path / "tl", "Extraversion", pole),
            load_run_stats(tmp_path / "vllm", "Extraversion", pole),
        )
        assert got.n_tokens == ref.n_tokens > 0
        moved = explain_differences(ref, got, answer_acts(tl, _pairs(tl, a)))
        print(f"{family} {pole}: {moved} of {ref.n_tokens * ref.n_active.numel()} activations in another bin")
        assert moved <= 1e-4 * ref.n_tokens * ref.n_active.numel()
        assert torch.allclose(got.sum, ref.sum, rtol=1e-4, atol=1e-4)
        assert torch.allclose(got.up_sum, ref.up_sum, rtol=1e-4, atol=1e-3)
        assert torch.allclose(got.resid_sum, ref.resid_sum, rtol=1e-4, atol=1e-3)


def _pairs(tl, rows):
    proto = load_protocol("lens")
    return [
        (
            proto.prompt(tl.tokenizer, "search", personality=r["persona"], question=r["question"]).token_ids,
            r["answer_token_ids"],
        )
        for r in rows
    ]


def test_answer_nlls_equal_the_transformerlens_forward(pairs):
    from npti_lens.evaluation.capability import sequence_nlls
    from npti_lens.judges.fluency import perplexities

    tl, engine, _, _ = pairs["llama"]
    tok = tl.tokenizer
    seqs = [(tok(q)["input_ids"], tok(QUESTIONS[-1 - i], add_special_tokens=False)["input_ids"])
            for i, q in enumerate(QUESTIONS[:4])] + [([1, 5, 6], [])]  # fmt: skip
    ref = sequence_nlls(tl, seqs[:4])
    got = engine.sequence_nlls(seqs)
    assert got[4] == (0.0, 0)
    for (a, n), (b, m) in zip(ref, got[:4], strict=True):
        assert n == m > 0 and b == pytest.approx(a, rel=1e-4)
    rows = [{"question": q, "answer": QUESTIONS[2]} for q in QUESTIONS[:3]] + [
        {"question": "x", "answer": ""}
    ]
    p_tl, p_vllm = perplexities(tl, rows), perplexities(engine, rows)
    assert p_tl[3] is None and p_vllm[3] is None
    assert p_vllm[:3] == pytest.approx(p_tl[:3], rel=1e-4)
