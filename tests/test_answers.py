"""The workflow layer from Python: the same calls and defaults as the CLI, the same files out."""

from __future__ import annotations

import json

import torch

from npti_lens.cli import main
from npti_lens.inputs.questions import load_questions
from npti_lens.method.induction import load_pair, random_control
from npti_lens.method.neurons import NeuronSet, load_neuron_sets
from npti_lens.method.protocol import load_protocol
from npti_lens.method.selection import SelectConfig, select_run
from npti_lens.workflows.answers import Condition, answer, baseline_condition, read_answers, write_answers
from npti_lens.workflows.scoring import score_file
from tests.helpers import write_data

GEN = ["--max-new-tokens", "4", "--batch-size", "4"]


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_python_and_cli_give_the_same_files(tiny_dirs, tiny_models, tmp_path, capsys):
    qdir, personas = write_data(tmp_path)
    qfile = qdir / "Extraversion.json"
    model_dir, model = str(tiny_dirs["llama"]), tiny_models["llama"]
    run = tmp_path / "run"
    argv = ["search", "--model", model_dir, "--questions", str(qdir), "--personas", str(personas), "--out",
            str(run), "--traits", "Extraversion", *GEN]  # fmt: skip
    assert main(argv) == 0
    # select: the CLI and select_run write the same sets
    assert main(["select", str(run), "--out", str(tmp_path / "n_cli"), "--min-neurons", "8"]) == 0
    sets = select_run(run, tmp_path / "n_py", SelectConfig(min_neurons=8))
    for name, ns in load_neuron_sets(tmp_path / "n_cli").items():
        assert (tmp_path / "n_cli" / name / "neurons.csv").read_bytes() == (
            tmp_path / "n_py" / name / "neurons.csv"
        ).read_bytes()
        assert torch.equal(ns.flat(), sets[name].flat())
    # generate, induce, baseline: the rows answer() returns are the lines the CLI writes
    questions = load_questions(qfile)
    proto = load_protocol("npti")
    pair = load_pair(tmp_path / "n_cli", "Extraversion", "high")
    cases = [
        (["generate"], Condition.none()),
        (
            [
                "induce",
                "--neurons",
                str(tmp_path / "n_cli"),
                "--trait",
                "Extraversion",
                "--pole",
                "high",
                "--gamma",
                "2",
            ],
            Condition.npti([pair], proto.induce_config(gamma=2.0)),
        ),
        (
            [
                "baseline",
                "--method",
                "p2",
                "--trait",
                "Extraversion",
                "--pole",
                "high",
                "--personas",
                str(personas),
            ],
            baseline_condition("p2", "Extraversion", "high", len(questions), proto, personas=personas),
        ),
    ]
    for i, (cmd, condition) in enumerate(cases):
        out = tmp_path / f"cli_{i}.jsonl"
        assert main([*cmd, "--model", model_dir, "--questions", str(qfile), "--out", str(out), *GEN]) == 0
        gcfg = proto.generate_config(condition.stage, max_new_tokens=4, batch_size=4)
        rows = answer(model, questions, condition, gcfg)
        write_answers(tmp_path / f"py_{i}.jsonl", rows)
        assert (tmp_path / f"py_{i}.jsonl").read_bytes() == out.read_bytes(), cmd[0]
    # score: score_file writes what npti score writes
    assert main(["score", str(tmp_path / "cli_0.jsonl"), "--out", str(tmp_path / "s_cli"), "--trait", "Extraversion",
                 "--pole", "low"]) == 0  # fmt: skip
    res = score_file(tmp_path / "py_0.jsonl", tmp_path / "s_py", trait="Extraversion", pole="low")
    assert (tmp_path / "s_cli" / "summary.csv").read_text() == res.summary.read_text()
    assert res.failed == 0 and len(res.scored) == len(questions)
    assert {r["pole"] for r in read_answers(res.scores)} == {"low"}


def test_conditions_label_their_rows(tiny_models, tmp_path):
    model = tiny_models["gpt2"]
    from npti_lens.model.sites import mlp_sites

    sites = mlp_sites(model)
    flat = torch.arange(0, 30, 3)
    base = NeuronSet(
        trait="Openness", pole="low", model=str(model.cfg.model_name).rstrip("/").split("/")[-1],
        n_layers=sites.n_layers, d_mlp=sites.d_mlp, layer=torch.zeros(1, dtype=torch.long),
        index=torch.zeros(1, dtype=torch.long), diff=torch.ones(1, dtype=torch.float64),
        p_active=torch.ones(1, dtype=torch.float64), q95=torch.ones(1, dtype=torch.float64),
    )  # fmt: skip
    target = NeuronSet.from_flat(
        flat, base, q95=torch.ones(10, dtype=torch.float64), diff=torch.full((10,), 0.4, dtype=torch.float64)
    )
    opp = NeuronSet.from_flat(torch.arange(1, 30, 3), base, pole="high")
    control = random_control(target, seed=1, exclude=torch.cat([target.flat(), opp.flat()]))
    gcfg = load_protocol("lens").generate_config("neutral", max_new_tokens=3)
    qs = ["what would you do on the weekend ?", "how do you feel in the morning ?"]
    rows = answer(model, qs, Condition.random([(control, None)], load_protocol("lens").induce_config(gamma=2.0),
                  trait="Openness", pole="low", name="control"), gcfg, protocol="lens")  # fmt: skip
    assert [r["condition"] for r in rows] == ["control", "control"]
    assert {(r["trait"], r["pole"], r["gamma"], r["protocol"]) for r in rows} == {
        ("Openness", "low", 2.0, "lens")
    }
    # set operations
    assert len(target & opp) == 0 and len(target | opp) == 20
    assert torch.equal((target | opp).flat()[:10], target.flat())
    assert torch.equal((target & (target | opp)).flat(), target.flat())
