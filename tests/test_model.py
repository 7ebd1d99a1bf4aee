"""Model loading: local folder, an already-loaded HF model, dtype; clear errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from npti_lens.core.errors import UserError
from npti_lens.inputs.prompts import build
from npti_lens.method.recording import record_batch
from npti_lens.method.stats import Stats
from npti_lens.model.generation import GenerateConfig, generate
from npti_lens.model.load import ModelConfig, load_model, model_id
from npti_lens.model.sites import mlp_sites
from tests.helpers import QUESTIONS


def test_hf_model_and_tokenizer_give_the_same_model(tiny_dirs, tiny_models):
    folder = tiny_dirs["qwen2"]
    hf = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    wrapped = load_model(ModelConfig(model="qwen2"), hf_model=hf, tokenizer=tok)
    ids = torch.tensor([build(tok, QUESTIONS[0]).token_ids])
    with torch.no_grad():
        torch.testing.assert_close(wrapped(ids), tiny_models["qwen2"](ids))
    assert model_id(wrapped) == model_id(tiny_models["qwen2"]) == "qwen2"
    with pytest.raises(UserError, match="tokenizer"):
        load_model("qwen2", hf_model=hf)


def test_tokenizer_built_in_memory_is_accepted(tiny_dirs):
    from tests.helpers import make_tokenizer

    tok = make_tokenizer(chat=False)
    assert not tok.init_kwargs.get("name_or_path")
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["gpt2"])
    model = load_model(ModelConfig(model="gpt2-in-memory"), hf_model=hf, tokenizer=tok)
    ids = build(model.tokenizer, QUESTIONS[0]).token_ids
    assert ids == build(tok, QUESTIONS[0]).token_ids
    assert len(generate(model, [ids], GenerateConfig(max_new_tokens=3))[0].answer_ids) == 3


def test_bfloat16_generation_and_recording(tiny_dirs):
    model = load_model(ModelConfig(model=str(tiny_dirs["llama"]), dtype="bfloat16"))
    assert next(model.original_model.parameters()).dtype == torch.bfloat16
    prompts = [build(model.tokenizer, q).token_ids for q in QUESTIONS[:3]]
    gens = generate(model, prompts, GenerateConfig(max_new_tokens=6, batch_size=3))
    sites = mlp_sites(model)
    stats = Stats.zeros(sites.n_layers, sites.d_mlp)
    record_batch(model, [(g.prompt_ids, g.answer_ids) for g in gens], stats)
    assert stats.n_tokens == sum(len(g.answer_ids) for g in gens) > 0
    assert int(stats.hist.sum()) == stats.n_tokens * sites.n_neurons


def test_bad_model_path_and_dtype(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="--dtype"):
        load_model(ModelConfig(model=str(tmp_path), dtype="int3"))


def test_model_facts_are_worked_out_once_and_carried(tiny_models):
    from npti_lens.method.protocol import protocol_for
    from npti_lens.model import sites as sites_module
    from npti_lens.model.load import FACTS_ATTR, facts, model_dims, model_id, n_positions

    for family, model in tiny_models.items():
        f = facts(model)
        assert getattr(model, FACTS_ATTR) is f  # computed at load, kept on the model
        s = sites_module.mlp_sites(model)
        assert (f.n_layers, f.d_mlp, f.gated) == (s.n_layers, s.d_mlp, s.gated), family
        assert (model_id(model), model_dims(model), n_positions(model)) == (
            f.id,
            (f.n_layers, f.d_mlp),
            f.n_positions,
        )
        assert f.engine == "tl" and f.protocol == "npti" and protocol_for(model).name == "npti"
        assert f.d_model == int(model.cfg.d_model) and f.eos_ids
