"""Generation: batched == single == no cache == HF generate, token for token; prompts; EOS."""

from __future__ import annotations

import pytest
import torch

from npti_lens.inputs.prompts import build
from npti_lens.model.generation import GenerateConfig, generate
from tests.helpers import FAMILIES, QUESTIONS, hf_reference

PROMPT_TEXTS = [QUESTIONS[0], "hello", QUESTIONS[2] + " " + QUESTIONS[3], QUESTIONS[5]]


def _prompts(model):
    return [build(model.tokenizer, q).token_ids for q in PROMPT_TEXTS]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_single_nocache_and_hf_agree(family, tiny_models, tiny_dirs):
    model = tiny_models[family]
    prompts = _prompts(model)
    assert len({len(p) for p in prompts}) == len(prompts), "prompts must differ in length"
    cfg = GenerateConfig(max_new_tokens=16, batch_size=4, repetition_penalty=1.0)
    batched = [g.answer_ids for g in generate(model, prompts, cfg)]
    single = [generate(model, [p], cfg)[0].answer_ids for p in prompts]
    nocache = [
        g.answer_ids
        for g in generate(
            model,
            prompts,
            GenerateConfig(max_new_tokens=16, batch_size=4, repetition_penalty=1.0, use_cache=False),
        )
    ]
    hf = hf_reference(tiny_dirs[family])
    ref = []
    for p in prompts:
        out = hf.generate(
            torch.tensor([p]), max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=2
        )[0, len(p) :].tolist()
        ref.append(out[: out.index(2)] if 2 in out else out)
    assert batched == single
    assert batched == nocache
    assert batched == ref
    assert sum(len(set(a)) for a in batched) > 8, "degenerate outputs would make the check weak"


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_repetition_penalty_matches_hf(family, tiny_models, tiny_dirs):
    model = tiny_models[family]
    hf = hf_reference(tiny_dirs[family])
    for p in _prompts(model):
        ours = generate(model, [p], GenerateConfig(max_new_tokens=12, repetition_penalty=1.3))[0].answer_ids
        ref = hf.generate(
            torch.tensor([p]),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
            repetition_penalty=1.3,
            eos_token_id=2,
        )[0, len(p) :].tolist()
        assert ours == (ref[: ref.index(2)] if 2 in ref else ref)


def test_chat_template_no_double_bos(tiny_models):
    tok = tiny_models["llama"].tokenizer
    p = build(tok, "what would you do ?", "you love a party")
    assert p.text.startswith("<s><|system|> you love a party")
    assert p.text.endswith("<|assistant|> ")
    assert p.token_ids[0] == tok.bos_token_id and p.token_ids[1] != tok.bos_token_id
    plain = build(tiny_models["gpt2"].tokenizer, "what would you do ?")
    assert plain.text == "Question: what would you do ?\nAnswer:"
    assert plain.token_ids[0] == 1 and plain.token_ids[1] != 1


def test_stops_at_eos_and_sampling_is_seeded(tiny_models):
    model = tiny_models["llama"]
    prompts = _prompts(model)
    cfg = GenerateConfig(max_new_tokens=20, temperature=1.5, seed=3, batch_size=4)
    a = generate(model, prompts, cfg)
    b = generate(model, prompts, cfg)
    assert [g.answer_ids for g in a] == [g.answer_ids for g in b]
    for g in a:
        assert 2 not in g.answer_ids
        assert g.hit_eos or len(g.answer_ids) == 20
    c = generate(model, prompts, GenerateConfig(max_new_tokens=20, temperature=1.5, seed=4, batch_size=4))
    assert [g.answer_ids for g in a] != [g.answer_ids for g in c]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_fast_path_without_hooks_equals_the_bridge_path(family, tiny_models):
    """With no hook on the model the loop runs the HF model without the bridge's wrappers (same weight
    tensors); its answers equal the bridge path's token for token, greedy and sampled."""
    from npti_lens.model.sites import MLPSites, any_hook, forward_module, hooks_added, plain_hf

    model = tiny_models[family]
    plain = plain_hf(model)
    if family == "gpt2":  # the bridge computes GPT-2's attention its own way: no fast path there
        assert plain is None
    else:  # the fast path is taken (else this test would compare the bridge with itself)
        assert plain is not None, f"{family}: the plain-HF fast path fell back to the bridge"
        emb = model.original_model.get_input_embeddings().weight
        assert plain.get_input_embeddings().weight.data_ptr() == emb.data_ptr()  # no copy
        assert forward_module(model) is plain
    prompts = [build(model.tokenizer, q).token_ids for q in QUESTIONS[:4]]
    for cfg in (GenerateConfig(max_new_tokens=10, batch_size=4, repetition_penalty=1.15),
                GenerateConfig(max_new_tokens=10, batch_size=4, temperature=0.8, top_p=0.9, seed=3)):  # fmt: skip
        assert not any_hook(model)
        fast = generate(model, prompts, cfg)
        with hooks_added(model, [(MLPSites.post(0), lambda x, hook: None)]):  # a no-op hook: bridge path
            assert any_hook(model)
            slow = generate(model, prompts, cfg)
        assert [g.answer_ids for g in fast] == [g.answer_ids for g in slow], family
    assert not any_hook(model)


def test_a_model_without_the_fast_path_says_why(tiny_models, caplog):
    """The fallback to the bridge is logged with its reason, not silent (GPT-2: the bridge computes
    its attention its own way, so a probe forward differs)."""
    import logging

    from npti_lens.model import sites

    model = tiny_models["gpt2"]
    sites._PLAIN.pop(model, None)  # worked out again, under caplog
    with caplog.at_level(logging.INFO, logger="npti_lens.model.sites"):
        assert sites.plain_hf(model) is None
    assert "no plain-HF fast path (the bridge computes a module its own way" in caplog.text
