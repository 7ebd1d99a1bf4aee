"""Recording: streaming statistics equal a full activation cache; bins; merge; save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from npti_lens.core.constants import N_BINS
from npti_lens.inputs.prompts import build
from npti_lens.method.recording import record_batch
from npti_lens.method.stats import Stats, accumulate, bin_edges, bin_index
from npti_lens.model.sites import mlp_sites
from tests.helpers import FAMILIES, QUESTIONS


def reference_bin(a: float) -> int:
    """Bin of one activation by the definition: bin 0 is a <= 0, bin k is (k-1)/100 < a <= k/100."""
    if a <= 0:
        return 0
    for k in range(1, N_BINS - 1):
        if a <= k / 100:  # exact decimal edge as a double
            return k
    return N_BINS - 1


def test_bins_match_definition_at_and_around_every_edge():
    vals = [-1.0, 0.0, 1e-12, 2.99, 2.995, 3.0, 100.0]
    for k in range(300):
        e = np.float32(k / 100)
        vals += [float(e), float(np.nextafter(e, np.float32(-1))), float(np.nextafter(e, np.float32(5)))]
    a = torch.tensor(vals, dtype=torch.float32)
    want = [reference_bin(float(v)) for v in a.tolist()]
    assert bin_index(a).tolist() == want
    assert torch.bucketize(a, bin_edges(), right=False).tolist() == want
    dense = torch.linspace(-0.05, 3.05, 200_001)  # every bin, many values per bin
    assert torch.equal(bin_index(dense), torch.bucketize(dense, bin_edges(), right=False))


def full_cache_reference(model, sequences):
    """Run each sequence alone, cache every hook_pre in full, and count in plain numpy."""
    sites = mlp_sites(model)
    n_tok = 0
    hist = np.zeros((sites.n_layers, sites.d_mlp, N_BINS), dtype=np.int64)
    active = np.zeros((sites.n_layers, sites.d_mlp), dtype=np.int64)
    s = np.zeros((sites.n_layers, sites.d_mlp))
    for prompt, answer in sequences:
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("mlp.hook_pre"))
        n_tok += len(answer)
        for layer in range(sites.n_layers):
            a = sites.act_fns[layer](cache[sites.pre(layer)][0, len(prompt) :]).double().numpy()
            active[layer] += (a > 0).sum(0)
            s[layer] += a.sum(0)
            for row in a.astype(np.float32):
                for i, v in enumerate(row):
                    hist[layer, i, reference_bin(float(v))] += 1
    return n_tok, active, hist, s


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_streaming_equals_full_cache(family, tiny_models):
    model = tiny_models[family]
    tok = model.tokenizer
    seqs = [
        (build(tok, q).token_ids, build(tok, QUESTIONS[-1 - i]).token_ids[1 : 6 + i])
        for i, q in enumerate(QUESTIONS[:4])
    ]
    sites = mlp_sites(model)
    stats = Stats.zeros(sites.n_layers, sites.d_mlp)
    record_batch(model, seqs[:3], stats)
    record_batch(model, seqs[3:], stats)
    n_tok, active, hist, s = full_cache_reference(model, seqs)
    assert stats.n_tokens == n_tok == sum(len(a) for _, a in seqs)
    np.testing.assert_array_equal(stats.n_active.numpy(), active)
    # Binning is exact, and here batched forwards match single ones bit for bit.
    np.testing.assert_array_equal(stats.hist.numpy(), hist)
    np.testing.assert_allclose(stats.sum.numpy(), s, rtol=1e-5, atol=1e-5)
    assert (stats.hist.sum(-1) == n_tok).all()
    assert (stats.n_active == n_tok - stats.hist[..., 0]).all()


def test_streaming_exact_on_fixed_activations():
    rng = np.random.default_rng(0)
    acts = rng.normal(0.3, 1.0, size=(50, 7)).astype(np.float32)
    acts[0, :] = [0.0, 0.01, 0.02, 2.99, 3.0, -0.0, 0.07]
    stats = Stats.zeros(1, 7)
    accumulate(stats, 0, torch.from_numpy(acts[:20]))
    accumulate(stats, 0, torch.from_numpy(acts[20:]))
    want = np.zeros((7, N_BINS), dtype=np.int64)
    for row in acts:
        for i, v in enumerate(row):
            want[i, reference_bin(float(v))] += 1
    np.testing.assert_array_equal(stats.hist[0].numpy(), want)
    np.testing.assert_array_equal(stats.n_active[0].numpy(), (acts > 0).sum(0))
    np.testing.assert_allclose(stats.sum_sq[0].numpy(), (acts.astype(np.float64) ** 2).sum(0), rtol=1e-6)


def test_merge_and_save_load_round_trip(tmp_path):
    rng = torch.Generator().manual_seed(0)
    a, b = Stats.zeros(2, 5, meta={"model": "m"}), Stats.zeros(2, 5)
    x = torch.randn(40, 5, generator=rng)
    y = torch.randn(40, 5, generator=rng)  # every layer sees every token, as in a real run
    accumulate(a, 0, x[:15])
    accumulate(a, 1, y[:15])
    a.n_tokens += 15
    accumulate(b, 0, x[15:])
    accumulate(b, 1, y[15:])
    b.n_tokens += 25
    whole = Stats.zeros(2, 5)
    accumulate(whole, 0, x)
    accumulate(whole, 1, y)
    whole.n_tokens += 40
    merged = a + b
    assert merged.n_tokens == 40
    assert torch.equal(merged.hist, whole.hist) and torch.equal(merged.n_active, whole.n_active)
    assert torch.allclose(merged.sum, whole.sum)
    path = tmp_path / "s.safetensors"
    merged.save(path)
    back = Stats.load(path)
    assert back.n_tokens == 40 and back.meta["model"] == "m"
    for f in ("n_active", "hist", "sum", "sum_sq"):
        assert torch.equal(getattr(back, f), getattr(merged, f))
    assert math.isclose(float(back.p_active()[0, 0]), float(merged.n_active[0, 0]) / 40)


@pytest.mark.parametrize("family", FAMILIES)
def test_act_of_hook_pre_is_the_hf_neuron(family, tiny_models, tiny_dirs):
    """act_fn(hook_pre) equals the HF module's act_fn output (captured by a plain torch hook)."""
    from tests.helpers import hf_reference

    model, hf = tiny_models[family], hf_reference(tiny_dirs[family])
    sites = mlp_sites(model)
    ids = torch.tensor([build(model.tokenizer, QUESTIONS[1]).token_ids])
    seen = {}
    mlps = hf.model.layers if hasattr(hf, "model") else hf.transformer.h
    handles = [
        (getattr(m.mlp, "act_fn", None) or m.mlp.act).register_forward_hook(
            lambda mod, i, o, L=L: seen.__setitem__(L, o)
        )
        for L, m in enumerate(mlps)
    ]
    with torch.no_grad():
        hf(ids)
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("mlp.hook_pre"))
    for h in handles:
        h.remove()
    for layer in range(sites.n_layers):
        ours = sites.act_fns[layer](cache[sites.pre(layer)])
        torch.testing.assert_close(ours, seen[layer], rtol=1e-5, atol=1e-5)


def test_recording_while_decoding_equals_teacher_forcing(tiny_models):
    """Statistics gathered inside generate cover the fed answer tokens, as teacher forcing does."""
    from npti_lens.method.recording import recording
    from npti_lens.model.generation import GenerateConfig, generate

    model = tiny_models["llama"]
    sites = mlp_sites(model)
    prompts = [build(model.tokenizer, q).token_ids for q in QUESTIONS[:4]]
    cfg = GenerateConfig(max_new_tokens=10, batch_size=4, repetition_penalty=1.0)
    live = Stats.zeros(sites.n_layers, sites.d_mlp)
    with recording(model, live):
        gens = generate(model, prompts, cfg)
    # Decoding feeds every answer token but the last one generated (EOS is never part of an answer).
    fed = [(g.prompt_ids, g.answer_ids if g.hit_eos else g.answer_ids[:-1]) for g in gens]
    forced = Stats.zeros(sites.n_layers, sites.d_mlp)
    record_batch(model, fed, forced)
    assert live.n_tokens == forced.n_tokens == sum(len(a) for _, a in fed)
    # A cached forward may differ from a full one in the last float bits: allow a handful of moves.
    assert int((live.hist - forced.hist).abs().sum()) <= 4
    assert int((live.n_active - forced.n_active).abs().sum()) <= 2
