"""Monitoring: both readouts against a computation on the plain HF model, the trace while generating
against teacher forcing, the block choice against its own AUROCs, the CLI and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from npti_lens.cli import main
from npti_lens.evaluation.control import auroc
from npti_lens.evaluation.monitor_validity import validity
from npti_lens.inputs.prompts import tokenize
from npti_lens.method.directions import Direction
from npti_lens.method.neurons import load_neuron_sets
from npti_lens.method.readout import Readout, monitor
from npti_lens.model.generation import GenerateConfig, generate
from npti_lens.workflows.monitoring import choose_layer, monitor_rows, read_monitored
from tests.helpers import hf_reference, search_and_select

GEN = ["--max-new-tokens", "6", "--batch-size", "4"]


@pytest.fixture(scope="module")
def llama_run(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    return (root, *search_and_select(tiny_dirs["llama"], root, min_neurons=40, gen=GEN))


@pytest.fixture(scope="module")
def readout(llama_run):
    _, _, neurons = llama_run
    sets = load_neuron_sets(neurons)
    d = Direction.load(neurons / "Extraversion_high")
    return Readout(sets["Extraversion_high"], sets["Extraversion_low"], d, (1, 2))


def _reference(hf, readout: Readout, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per position: the npti readout from gate_proj outputs through the MLP's act_fn, and the mean
    projection of the chosen layers' outputs on the unit vectors (plain HF, hooks on its modules)."""
    gates, outs = {}, {}
    handles = []
    for i, layer in enumerate(hf.model.layers):
        handles.append(
            layer.mlp.gate_proj.register_forward_hook(lambda m, a, o, i=i: gates.__setitem__(i, o[0]))
        )
        handles.append(layer.register_forward_hook(
            lambda m, a, o, i=i: outs.__setitem__(i, (o[0] if isinstance(o, tuple) else o)[0])))  # fmt: skip
    with torch.no_grad():
        hf(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    npti = np.zeros(len(ids))
    for sign, s in ((1, readout.neurons), (-1, readout.opposite)):
        for layer, index in zip(s.layer.tolist(), s.index.tolist(), strict=True):
            a = hf.model.layers[layer].mlp.act_fn(gates[layer][:, index])
            npti += sign * (a > 0).double().numpy() / len(s)
    v = readout.direction.vectors.double()
    vec = np.mean([(outs[k].double() @ (v[k] / v[k].norm())).numpy() for k in readout.layers], axis=0)
    return npti, vec


def test_readouts_equal_a_computation_on_the_plain_model(llama_run, readout, tiny_dirs, tiny_models):
    _, run, _ = llama_run
    model = tiny_models["llama"]
    rows = read_monitored(run / "answers" / "Extraversion_high.jsonl")[:5]
    got = monitor_rows(model, rows, readout, batch_size=3)
    hf = hf_reference(tiny_dirs["llama"])
    for row, res in zip(rows, got, strict=True):
        p, a = tokenize(model.tokenizer, row["prompt"]), row["answer_token_ids"]
        npti, vec = _reference(hf, readout, p + a)
        assert res["npti_prompt"] == pytest.approx(npti[len(p) - 1], abs=1e-6)
        assert res["npti_answer"] == pytest.approx(npti[len(p) :].mean(), abs=1e-5)
        assert res["trace"]["npti"] == pytest.approx(list(npti[len(p) :]), abs=1e-4)
        assert res["vector_prompt"] == pytest.approx(vec[len(p) - 1], rel=1e-4, abs=1e-5)
        assert res["vector_answer"] == pytest.approx(vec[len(p) :].mean(), rel=1e-4, abs=1e-5)
        assert len(res["trace"]["tokens"]) == len(a) == res["n_answer_tokens"]
    assert any(r["npti_answer"] != 0 for r in got)  # the sets are active at all


def test_a_trace_while_generating_equals_teacher_forcing(llama_run, readout, tiny_models):
    _, run, _ = llama_run
    model = tiny_models["llama"]
    rows = read_monitored(run / "answers" / "Extraversion_low.jsonl")[:3]
    prompts = [tokenize(model.tokenizer, r["prompt"]) for r in rows]
    cfg = GenerateConfig(max_new_tokens=5, batch_size=4, ignore_eos=True)
    with monitor(model, readout) as trace:
        gens = generate(model, prompts, cfg)
    assert len(trace.segments) == 1 and trace.forwards == 5  # the prefill and 4 fed tokens
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # generate's batch order
    width = max(len(p) for p in prompts)
    forced = monitor_rows(
        model, [{**rows[i], "answer_token_ids": gens[i].answer_ids} for i in range(3)], readout
    )
    for b, i in enumerate(order):
        live_npti, live_vec = trace.npti[b, width - 1 :], trace.vector[b, width - 1 :]
        want = forced[i]
        assert float(live_npti[0]) == pytest.approx(want["npti_prompt"], abs=1e-6)
        assert float(live_vec[0]) == pytest.approx(want["vector_prompt"], rel=1e-4, abs=1e-4)
        # the last generated token is never fed to the model while generating
        assert live_npti[1:].tolist() == pytest.approx(want["trace"]["npti"][:-1], abs=1e-4)
        assert live_vec[1:].tolist() == pytest.approx(want["trace"]["vector"][:-1], rel=1e-3, abs=1e-3)
    frame = trace.to_frame()
    assert len(frame) == 3 * (width + 4) and set(frame.columns) == {
        "segment",
        "row",
        "position",
        "npti",
        "vector",
    }


def test_the_context_removes_its_hooks_and_refuses_what_does_not_fit(readout, tiny_models, llama_run):
    model = tiny_models["llama"]
    before = sum(len(h.fwd_hooks) for h in model.hook_dict.values())
    with monitor(model, readout) as trace:
        model(torch.tensor([[1, 2, 3]]))
    assert sum(len(h.fwd_hooks) for h in model.hook_dict.values()) == before
    assert trace.npti.shape == (1, 3) and trace.vector.shape == (1, 3)
    with pytest.raises(RuntimeError, match="did not fire"), monitor(model, readout):
        pass
    assert sum(len(h.fwd_hooks) for h in model.hook_dict.values()) == before
    sets = load_neuron_sets(llama_run[2])
    with pytest.raises(Exception, match="opposite"):
        Readout(sets["Extraversion_high"], sets["Extraversion_high"])
    with pytest.raises(Exception, match="lack Extraversion_low"):
        monitor(model, {"Extraversion_high": sets["Extraversion_high"]}, "Extraversion_high").__enter__()
    with pytest.raises(Exception, match="selected on .llama., not .gpt2."):
        monitor(tiny_models["gpt2"], readout).__enter__()


def test_the_block_chosen_is_the_one_that_best_separates_the_search_answers(llama_run, readout, tiny_models):
    _, run, _ = llama_run
    model = tiny_models["llama"]
    best, scores = choose_layer(model, readout.neurons, readout.opposite, readout.direction, run, n=6)
    assert best == int(np.argmax(scores)) and len(scores) == readout.direction.n_layers
    # oracle for one block: the AUROC of answer-mean projections computed through monitor_rows
    one = Readout(readout.neurons, readout.opposite, readout.direction, (best,))
    means = {p: [r["vector_answer"] for r in monitor_rows(model, read_monitored(run / "answers" / f"Extraversion_{p}.jsonl")[:6], one)]
             for p in ("high", "low")}  # fmt: skip
    assert scores[best] == pytest.approx(auroc(np.array(means["high"]), np.array(means["low"])), abs=1e-4)


def test_validity_aurocs_and_correlations_by_hand():
    rng = np.random.default_rng(0)

    def rows(shift: float, n: int = 12) -> list[dict]:
        x = rng.normal(shift, 1, n)
        return [{"npti_prompt": a, "npti_answer": a / 2, "vector_prompt": -a, "vector_answer": a,
                 "p_high": 1 / (1 + np.exp(-a)), "induced": False} for a in x]  # fmt: skip

    sets = {"Openness": {"none": rows(0), "high": rows(1.5), "low": rows(-1.5)}}
    out = {(r["readout"], r["at"]): r for r in validity(sets, n_boot=200)}
    x = {c: np.array([r["vector_answer"] for r in v]) for c, v in sets["Openness"].items()}
    want = np.mean(x["high"][:, None] > x["low"][None, :])
    assert out[("vector", "answer")]["auroc_p2"] == pytest.approx(want, abs=1e-3)
    assert out[("vector", "prompt")]["auroc_p2"] == pytest.approx(1 - want, abs=1e-3)
    assert out[("vector", "answer")]["rho_judge"] == pytest.approx(1.0)  # p_high is monotone in it
    assert out[("vector", "answer")]["auroc_p2_low"] <= out[("vector", "answer")]["auroc_p2"]
    sets["Openness"]["high"][0]["induced"] = True
    with pytest.raises(Exception, match="un-induced"):
        validity(sets)


def test_the_cli_monitors_and_refuses_bad_input(llama_run, tiny_dirs, tmp_path, capsys):
    root, run, neurons = llama_run
    files = [str(run / "answers" / f"Extraversion_{p}.jsonl") for p in ("high", "low")]
    out, other = tmp_path / "mon", tmp_path / "other"

    def argv(inputs, folder=out, sets=neurons, *extra):
        return ["monitor", *map(str, inputs), "--model", str(tiny_dirs["llama"]), "--neurons", str(sets),
                "--trait", "Extraversion", "--pole", "high", "--out", str(folder), *extra]  # fmt: skip

    assert main(argv(files, out, neurons, "--run", str(run), "--choose-from", "4")) == 0
    printed = capsys.readouterr().out
    assert "direction read at block" in printed
    got = [json.loads(x) for x in (out / "monitor.jsonl").read_text().splitlines()]
    n = sum(len(read_monitored(f)) for f in files)
    assert len(got) == n and {r["set"] for r in got} == {"Extraversion_high", "Extraversion_low"}
    keys = {"question", "npti_prompt", "npti_answer", "vector_prompt", "vector_answer", "trace"}
    assert all(set(r) >= keys for r in got)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["readout"]["vector_layers"] == [int(np.argmax(cfg["vector_layers_chosen"]["auroc"]))]
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and summary[0].startswith("set,condition,n,induced,npti_prompt_mean")
    assert (out / "monitor.png").stat().st_size > 1000
    # refusals: one line, exit 2, before any model work, nothing written
    assert main(argv(files, out, neurons, "--layer", "1")) == 2  # the output folder holds a monitor
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv(files, other)) == 2  # neither --run nor --layer
    assert "--run" in capsys.readouterr().err
    row = read_monitored(files[0])[0]
    del row["_line"]
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({k: v for k, v in row.items() if k != "answer_token_ids"}) + "\n")
    assert main(argv([bare], other, neurons, "--layer", "1")) == 2
    assert f"{bare}:1: no answer_token_ids" in capsys.readouterr().err
    alien = tmp_path / "alien.jsonl"
    alien.write_text(json.dumps({**row, "model": "someone/else"}) + "\n")
    assert main(argv([alien], other, neurons, "--layer", "1")) == 2
    assert "someone/else" in capsys.readouterr().err
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "Extraversion_high").symlink_to(neurons / "Extraversion_high")
    assert main(argv(files, other, lone, "--layer", "1")) == 2
    assert "Extraversion_low" in capsys.readouterr().err
    assert main(argv(files, other, neurons, "--layer", "99")) == 2
    assert "--layer" in capsys.readouterr().err
    assert not other.exists() or not any(other.iterdir())


def test_the_cli_answers_questions_then_monitors(llama_run, tiny_dirs, tmp_path):
    root, run, neurons = llama_run
    out = tmp_path / "q"
    qfile = tmp_path / "qs.jsonl"
    qfile.write_text(
        "".join(json.dumps({"question": q}) + "\n" for q in ("do you like parties", "what do you do"))
    )
    argv = ["monitor", "--questions", str(qfile), "--model", str(tiny_dirs["llama"]), "--neurons", str(neurons),
            "--trait", "Extraversion", "--pole", "low", "--layer", "2", "--out", str(out), *GEN]  # fmt: skip
    assert main(argv) == 0
    answers = read_monitored(out / "answers.jsonl")
    got = [json.loads(x) for x in (out / "monitor.jsonl").read_text().splitlines()]
    assert len(got) == len(answers) and all(len(r["trace"]["npti"]) == r["n_answer_tokens"] for r in got)


def test_edited_answers_are_marked_and_an_engine_is_refused(readout):
    from npti_lens.workflows.monitoring import is_induced

    assert [is_induced(r) for r in ({"condition": "none"}, {"condition": "p2", "gamma": None})] == [
        False,
        False,
    ]
    assert all(is_induced(r) for r in ({"condition": "x", "gamma": 2.0}, {"condition": "random-vector"}))

    from npti_lens.model.load import Engine as EngineSeam

    class Engine(EngineSeam):
        engine_name = "vllm"

    with pytest.raises(Exception, match="answer on the engine, then monitor"):
        monitor(Engine(), readout).__enter__()


def test_damaged_token_ids_are_refused_before_any_forward(llama_run, readout, tiny_models):
    _, run, _ = llama_run
    model = tiny_models["llama"]
    row = read_monitored(run / "answers" / "Extraversion_high.jsonl")[0]
    vocab = int(model.cfg.d_vocab)
    with pytest.raises(
        Exception, match=f"line 1: answer_token_ids outside the model's vocabulary 0..{vocab - 1}"
    ):
        monitor_rows(model, [{**row, "answer_token_ids": [vocab]}], readout)
    with pytest.raises(Exception, match="more than the model's"):
        monitor_rows(model, [{**row, "answer_token_ids": [1] * 100_000}], readout)
