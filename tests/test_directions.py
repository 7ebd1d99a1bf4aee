"""The direction baseline: the mean-difference vector against a full-activation computation, steering
against a direct edit of the HF model, and the GPT-2 bridge between an NPTI shift and a vector."""

from __future__ import annotations

import json

import pytest
import torch

from npti_lens.cli import main
from npti_lens.inputs.prompts import tokenize
from npti_lens.method.directions import Direction, npti_as_vector, random_direction, steer
from npti_lens.method.induction import InduceConfig, induce
from npti_lens.method.neurons import load_pole
from npti_lens.method.protocol import load_protocol
from npti_lens.workflows.answers import Condition, answer
from tests.helpers import hf_reference, search_and_select

GEN = ["--max-new-tokens", "5", "--batch-size", "4"]


@pytest.fixture(scope="module")
def llama_run(tiny_dirs, tmp_path_factory):
    return search_and_select(
        tiny_dirs["llama"], tmp_path_factory.mktemp("directions"), min_neurons=10, gen=GEN
    )


def _layer_outputs(hf, ids: list[int]) -> list[torch.Tensor]:
    """Each decoder layer's output hidden states for one sequence (plain HF, hooks on the modules)."""
    outs: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(
            lambda m, i, o: outs.append((o[0] if isinstance(o, tuple) else o)[0].double())
        )
        for layer in hf.model.layers
    ]
    with torch.no_grad():
        hf(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    return outs


def test_mean_difference_equals_a_full_activation_computation(llama_run, tiny_dirs):
    run, neurons = llama_run
    hf = hf_reference(tiny_dirs["llama"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    means = {}
    for pole in ("high", "low"):
        rows = [
            json.loads(x) for x in (run / "answers" / f"Extraversion_{pole}.jsonl").read_text().splitlines()
        ]
        total, count = None, 0
        for r in rows:
            p, a = tokenize(tok, r["prompt"]), r["answer_token_ids"]
            outs = _layer_outputs(hf, p + a)
            at_answers = torch.stack([o[len(p) : len(p) + len(a)].sum(0) for o in outs])
            total = at_answers if total is None else total + at_answers
            count += len(a)
        means[pole] = total / count
    for pole, other in (("high", "low"), ("low", "high")):
        d = Direction.load(neurons / f"Extraversion_{pole}")
        assert d.trait == "Extraversion" and d.pole == pole and d.provenance["protocol"] == "npti"
        torch.testing.assert_close(d.vectors.double(), means[pole] - means[other], rtol=1e-4, atol=1e-5)


def test_steering_equals_a_direct_edit_of_the_hf_model(llama_run, tiny_models, tiny_dirs):
    _, neurons = llama_run
    model = tiny_models["llama"]
    d = Direction.load(neurons / "Extraversion_high")
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad(), steer(model, d, 2.5, layers=[1], positions="all") as handle:
        got = model.original_model(input_ids=ids).logits
    assert handle.fired == {1: 1}
    hf = hf_reference(tiny_dirs["llama"])

    def add(m, i, o):
        return (o[0] + 2.5 * d.vectors[1], *o[1:]) if isinstance(o, tuple) else o + 2.5 * d.vectors[1]

    h = hf.model.layers[1].register_forward_hook(add)
    with torch.no_grad():
        want = hf(input_ids=ids).logits
    h.remove()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # a random control keeps each layer's norm
    r = random_direction(d, seed=3)
    torch.testing.assert_close(r.norms(), d.norms(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(r.vectors, d.vectors)


def test_vector_condition_steers_generated_positions_only(llama_run, tiny_models):
    _, neurons = llama_run
    model = tiny_models["llama"]
    d = Direction.load(neurons / "Extraversion_high")
    gcfg = load_protocol("lens").generate_config("neutral", max_new_tokens=4)
    qs = ["what would you do on the weekend ?"]
    plain = answer(model, qs, Condition.none(), gcfg, protocol="lens", token_ids=True)
    steered = answer(model, qs, Condition.vector(d, 50.0), gcfg, protocol="lens", token_ids=True)
    # the first answer token comes from the unedited prompt; the strong vector changes what follows
    assert steered[0]["answer_token_ids"][0] == plain[0]["answer_token_ids"][0]
    assert steered[0]["answer_token_ids"] != plain[0]["answer_token_ids"]
    assert steered[0]["condition"] == "vector" and steered[0]["gamma"] == 50.0


def test_gpt2_npti_shift_is_exactly_a_vector(tiny_dirs, tiny_models, tmp_path):
    """Non-gated MLP: shifting neuron i by s_i adds s_i * W_out[i] to the block output."""
    run, neurons = search_and_select(tiny_dirs["gpt2"], tmp_path, min_neurons=12, gen=GEN)
    model = tiny_models["gpt2"]
    high = load_pole(neurons, "Extraversion", "high")
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    cfg = InduceConfig(gamma=1.7, keep_prob=1.0, deactivate=False, positions="all")
    with torch.no_grad(), induce(model, [(high, None)], cfg):
        shifted = model.original_model(input_ids=ids).logits
    vec = npti_as_vector(model, high, 1.7)
    with torch.no_grad(), steer(model, vec, 1.0, positions="all"):
        added = model.original_model(input_ids=ids).logits
    torch.testing.assert_close(shifted, added, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        plain = model.original_model(input_ids=ids).logits
    assert not torch.allclose(plain, added, atol=1e-3)  # the shift does something
    with pytest.raises(Exception, match="pass up_mean"):
        npti_as_vector(tiny_models["llama"], high, 1.0)


def test_vector_in_capability_and_inventory(llama_run, tiny_dirs, tmp_path):
    _, neurons = llama_run
    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        json.dumps({"question": "what would you do ?", "answer": "i go out with friends ."}) + "\n"
    )
    model = str(tiny_dirs["llama"])
    target = ["--neurons", str(neurons), "--trait", "Extraversion", "--pole", "high", "--model", model]
    assert main(["analyze", "capability", *target, "--texts", str(texts), "--gammas", "0.5,20",
                 "--method", "vector", "--out", str(tmp_path / "cap")]) == 0  # fmt: skip
    rows = (tmp_path / "cap" / "capability.csv").read_text().splitlines()
    nll = [float(r.split(",")[4]) for r in rows[1:]]  # delta_nll_per_token
    assert len(nll) == 3 and nll[0] == 0.0 and nll[2] != 0.0
    assert main(["inventory", *target, "--method", "vector", "--gamma", "20", "--respondents", "0",
                 "--out", str(tmp_path / "inv")]) == 0  # fmt: skip
    domains = (tmp_path / "inv" / "domains.csv").read_text()
    assert "Extraversion_high vector coef=20" in domains


def test_up_sums_equal_a_full_activation_computation(llama_run, tiny_dirs):
    from transformers import AutoTokenizer

    from npti_lens.method.stats import load_run_stats

    run, _ = llama_run
    hf = hf_reference(tiny_dirs["llama"])
    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    stats = load_run_stats(run, "Extraversion", "low")
    want = torch.zeros_like(stats.up_sum)
    rows = [json.loads(x) for x in (run / "answers" / "Extraversion_low.jsonl").read_text().splitlines()]
    for r in rows:
        p, a = tokenize(tok, r["prompt"]), r["answer_token_ids"]
        ups: list[torch.Tensor] = []
        hs = [
            layer.mlp.up_proj.register_forward_hook(lambda m, i, o, ups=ups: ups.append(o[0].double()))
            for layer in hf.model.layers
        ]
        with torch.no_grad():
            hf(input_ids=torch.tensor([p + a]))
        for h in hs:
            h.remove()
        want += torch.stack([u[len(p) : len(p) + len(a)].sum(0) for u in ups])
    torch.testing.assert_close(stats.up_sum, want, rtol=1e-4, atol=1e-5)


def test_vector_in_ablations(llama_run, tiny_models):
    from npti_lens.workflows.ablation import AblationConfig, run_ablation

    _, neurons = llama_run
    target, opp = load_pole(neurons, "Extraversion", "high"), load_pole(neurons, "Extraversion", "low")
    d = Direction.load(neurons / "Extraversion_high")
    cfg = AblationConfig(gamma=1.0, gammas="1", top_k="5", control_draws=2, vector_coef=3.0)
    gcfg = load_protocol("lens").generate_config("neutral", max_new_tokens=3)
    qs = ["what would you do on the weekend ?", "how do you feel in the morning ?"]
    rows = run_ablation(tiny_models["llama"], target, opp, qs, cfg, gcfg, protocol="lens", direction=d)
    vec = [r for r in rows if r["condition"] == "vector"]
    assert len(vec) == 2 and {r["gamma"] for r in vec} == {3.0}
    assert sum(r["condition"] == "random" for r in rows) == 2 * len(qs)
    with pytest.raises(Exception, match="no direction"):
        run_ablation(tiny_models["llama"], target, opp, qs, cfg, gcfg, protocol="lens")
