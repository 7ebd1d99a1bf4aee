"""Induction: exact neuron edits (vs editing act(gate) in the HF module), masks, positions, cleanup."""

from __future__ import annotations

import math

import pytest
import torch

from npti_lens.core.errors import UserError
from npti_lens.inputs.prompts import build
from npti_lens.method.induction import InduceConfig, induce, shift_sizes
from npti_lens.method.neurons import NeuronSet
from npti_lens.model.generation import GenerateConfig, generate
from npti_lens.model.load import model_id
from npti_lens.model.sites import hooks_added, mlp_sites
from tests.helpers import FAMILIES, QUESTIONS, hf_reference


def make_set(model, pole: str, flat: list[int], seed: int = 0) -> NeuronSet:
    sites = mlp_sites(model)
    g = torch.Generator().manual_seed(seed)
    n = len(flat)
    f = torch.tensor(flat)
    return NeuronSet(
        trait="Extraversion",
        pole=pole,
        model=model_id(model),
        n_layers=sites.n_layers,
        d_mlp=sites.d_mlp,
        layer=f // sites.d_mlp,
        index=f % sites.d_mlp,
        diff=torch.rand(n, generator=g, dtype=torch.float64),
        p_active=torch.rand(n, generator=g, dtype=torch.float64),
        q95=torch.rand(n, generator=g, dtype=torch.float64) * 2,
    )


def two_sets(model):
    sites = mlp_sites(model)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(sites.n_neurons, generator=g).tolist()
    return make_set(model, "high", perm[:40]), make_set(model, "low", perm[40:70], seed=1)


def hf_edited_logits(hf, ids, tgt: NeuronSet, opp: NeuronSet, gamma: float):
    """Reference: edit act(gate) (act(W_in x) for GPT-2) directly in the HF modules."""
    delta = shift_sizes(tgt, gamma)
    blocks = hf.model.layers if hasattr(hf, "model") else hf.transformer.h
    handles = []
    for layer, block in enumerate(blocks):
        act = getattr(block.mlp, "act_fn", None) or block.mlp.act
        t_idx = tgt.index[tgt.layer == layer]
        t_delta = delta[tgt.layer == layer]
        c_idx = opp.index[opp.layer == layer]

        def hook(mod, inp, out, t_idx=t_idx, t_delta=t_delta, c_idx=c_idx):
            out = out.clone()
            out[..., t_idx] += t_delta.to(out.dtype)
            out[..., c_idx] = out[..., c_idx].clamp(max=0)
            return out

        handles.append(act.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return hf(ids).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_induction_equals_editing_the_hf_module(family, tiny_models, tiny_dirs):
    model, hf = tiny_models[family], hf_reference(tiny_dirs[family])
    tgt, opp = two_sets(model)
    ids = torch.tensor([build(model.tokenizer, QUESTIONS[2]).token_ids])
    cfg = InduceConfig(gamma=1.3, keep_prob=1.0, positions="all")
    with torch.no_grad():
        plain = model(ids)
        with induce(model, [(tgt, opp)], cfg) as h:
            ours = model(ids)
    ref = hf_edited_logits(hf, ids, tgt, opp, 1.3)
    assert h.n_target == 40 and h.n_clamped == 30
    assert (ours - plain).abs().max() > 1e-2, "the edit must change the output"
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_exact_neurons_and_amounts_in_layer0(family, tiny_models):
    """At layer 0 (inputs unaffected by the edit), hook_post changes by exactly the shift."""
    model = tiny_models[family]
    sites = mlp_sites(model)
    tgt = make_set(model, "high", list(range(0, 20)))
    opp = make_set(model, "low", list(range(40, 55)), seed=2)
    ids = torch.tensor([build(model.tokenizer, QUESTIONS[0]).token_ids])
    seen = {}

    def grab(name):
        def fn(x, hook):
            seen[name] = x.clone()

        return fn

    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n.startswith("blocks.0.mlp.hook_p"))
        icfg = InduceConfig(gamma=0.8, keep_prob=1.0, positions="all")
        with induce(model, [(tgt, opp)], icfg), hooks_added(model, [(sites.post(0), grab("post"))]):
            model(ids)
    a = sites.act_fns[0](cache[sites.pre(0)])
    up = cache[sites.up(0)] if sites.gated else torch.ones_like(a)
    want_a = a.clone()
    want_a[..., :20] += shift_sizes(tgt, 0.8).float()
    want_a[..., 40:55] = want_a[..., 40:55].clamp(max=0)
    torch.testing.assert_close(seen["post"], want_a * up, rtol=0, atol=1e-6)
    changed = (seen["post"] != cache[sites.post(0)]).any(dim=(0, 1)).nonzero().squeeze(-1).tolist()
    clamped = [i for i in range(40, 55) if bool((a[..., i] > 0).any())]
    assert changed == list(range(20)) + clamped


def test_exact_keep_draws_a_fresh_90_percent_each_forward(tiny_models):
    """The `exact` keep rule (lens, organism): floor(0.9 n) neurons, a new choice each forward."""
    model = tiny_models["gpt2"]  # non-gated: hook_post is a itself, so shifts are read off directly
    sites = mlp_sites(model)
    tgt = make_set(model, "high", list(range(sites.d_mlp)))  # every neuron of layer 0
    ids = torch.tensor([build(model.tokenizer, QUESTIONS[0]).token_ids])
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n == sites.post(0))
        with induce(model, [(tgt, None)], InduceConfig(keep_prob=0.9, keep="exact", positions="all", seed=5)):
            seen: list[torch.Tensor] = []
            with hooks_added(model, [(sites.post(0), lambda x, hook: seen.append(x.clone()))]):
                for _ in range(3):
                    model(ids)
            masks = [(p != cache[sites.post(0)]).any(dim=(0, 1)) for p in seen]
    for m in masks:
        assert int(m.sum()) == math.floor(0.9 * sites.d_mlp)
    assert not torch.equal(masks[0], masks[1])


def test_generated_positions_only(tiny_models):
    model = tiny_models["llama"]
    sites = mlp_sites(model)
    tgt, opp = two_sets(model)
    prompts = [build(model.tokenizer, q).token_ids for q in QUESTIONS[:3]]
    posts: list[torch.Tensor] = []
    grab = [(sites.post(1), lambda x, hook: posts.append(x.clone()))]
    cfg = GenerateConfig(max_new_tokens=6, batch_size=3, repetition_penalty=1.0)
    with hooks_added(model, grab):
        plain = generate(model, prompts, cfg)
    n_plain = len(posts)
    # The capture hook is added after the induction's, so it sees the edited values.
    with induce(model, [(tgt, opp)], InduceConfig(gamma=3.0, keep_prob=1.0)), hooks_added(model, grab):
        induced = generate(model, prompts, cfg)
    prefill_plain, prefill_induced = posts[0], posts[n_plain]
    assert torch.equal(prefill_plain, prefill_induced), "prompt positions must be left alone"
    assert [g.answer_ids[0] for g in plain] == [g.answer_ids[0] for g in induced]
    assert [g.answer_ids for g in plain] != [g.answer_ids for g in induced]


def test_outside_generate_needs_positions_all(tiny_models):
    model = tiny_models["llama"]
    tgt, opp = two_sets(model)
    with pytest.raises(UserError, match="positions='all'"), induce(model, [(tgt, opp)]):
        model(torch.tensor([[1, 9, 10]]))


def test_hooks_removed_on_exit_and_error_and_others_kept(tiny_models):
    model = tiny_models["qwen2"]
    sites = mlp_sites(model)
    tgt, opp = two_sets(model)
    user_hook = model.hook_dict[sites.post(0)].add_hook(lambda x, hook: None)
    counts = lambda: {n: len(hp.fwd_hooks) for n, hp in model.hook_dict.items()}  # noqa: E731
    before = counts()
    with pytest.raises(ValueError, match="boom"), induce(model, [(tgt, opp)], InduceConfig(positions="all")):
        assert counts() != before
        raise ValueError("boom")
    assert counts() == before
    with induce(model, [(tgt, opp)], InduceConfig(positions="all")):
        model(torch.tensor([[1, 9, 10]]))
    assert counts() == before
    assert user_hook in model.hook_dict[sites.post(0)].fwd_hooks
    user_hook.hook.remove()
    model.hook_dict[sites.post(0)].fwd_hooks.remove(user_hook)


def test_hooks_that_never_fired_are_an_error(tiny_models):
    model = tiny_models["llama"]
    tgt, opp = two_sets(model)
    with (
        pytest.raises(RuntimeError, match="never fired"),
        induce(model, [(tgt, opp)], InduceConfig(positions="all")),
    ):
        pass


def test_sets_for_another_model_are_refused(tiny_models):
    model = tiny_models["llama"]
    tgt, _ = two_sets(model)
    wrong = NeuronSet(
        trait="Extraversion",
        pole="high",
        model=tgt.model,
        n_layers=tgt.n_layers,
        d_mlp=tgt.d_mlp + 1,
        layer=tgt.layer,
        index=tgt.index,
        diff=tgt.diff,
        p_active=tgt.p_active,
        q95=tgt.q95,
    )
    with pytest.raises(UserError, match="select neurons for this model"), induce(model, [(wrong, None)]):
        pass
    other = NeuronSet(
        **{
            **{
                k: getattr(tgt, k)
                for k in ("trait", "pole", "n_layers", "d_mlp", "layer", "index", "diff", "p_active", "q95")
            },
            "model": "other-model",
        }
    )
    with pytest.raises(UserError, match="allow-other-model"), induce(model, [(other, None)]):
        pass
    with induce(model, [(other, None)], InduceConfig(positions="all"), allow_other_model=True):
        model(torch.tensor([[1, 9, 10]]))
