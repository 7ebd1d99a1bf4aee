"""The npti CLI: search -> select -> induce for five families; one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from npti_lens.cli import main
from npti_lens.method.neurons import load_neuron_sets
from tests.helpers import FAMILIES, missing_organism, require, write_data

GEN = ["--max-new-tokens", "5", "--batch-size", "4"]


@pytest.mark.parametrize("family", FAMILIES)
def test_search_select_induce_end_to_end(family, tiny_dirs, tmp_path, capsys):
    qdir, personas = write_data(tmp_path)
    model = str(tiny_dirs[family])
    run, neurons = tmp_path / "run", tmp_path / "neurons"
    assert (
        main(
            [
                "search",
                "--model",
                model,
                "--questions",
                str(qdir),
                "--personas",
                str(personas),
                "--out",
                str(run),
                "--traits",
                "Extraversion",
                "--limit",
                "5",
                *GEN,
            ]
        )
        == 0
    )
    assert main(["select", str(run), "--out", str(neurons), "--min-neurons", "10"]) == 0
    sets = load_neuron_sets(neurons)
    assert set(sets) == {"Extraversion_high", "Extraversion_low"}
    assert len(sets["Extraversion_high"]) >= 10
    assert sets["Extraversion_high"].model == tiny_dirs[family].name
    out = tmp_path / "induced.jsonl"
    assert (
        main(
            [
                "induce",
                "--model",
                model,
                "--neurons",
                str(neurons),
                "--trait",
                "extraversion",
                "--pole",
                "high",
                "--gamma",
                "1.2",
                "--questions",
                str(qdir / "Extraversion.json"),
                "--out",
                str(out),
                *GEN,
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 7
    assert rows[0]["trait"] == "Extraversion" and rows[0]["pole"] == "high" and rows[0]["gamma"] == 1.2
    assert {"question", "prompt", "answer"} <= rows[0].keys()
    base = tmp_path / "base.jsonl"
    assert (
        main(
            [
                "generate",
                "--model",
                model,
                "--questions",
                str(qdir / "Extraversion.json"),
                "--out",
                str(base),
                *GEN,
            ]
        )
        == 0
    )
    assert json.loads(base.read_text().splitlines()[0])["gamma"] is None
    capsys.readouterr()


@pytest.fixture(scope="module")
def selected(tiny_dirs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    qdir, personas = write_data(tmp)
    model = str(tiny_dirs["llama"])
    main(
        [
            "search",
            "--model",
            model,
            "--questions",
            str(qdir),
            "--personas",
            str(personas),
            "--out",
            str(tmp / "run"),
            "--traits",
            "Extraversion",
            "--limit",
            "4",
            *GEN,
        ]
    )
    main(["select", str(tmp / "run"), "--out", str(tmp / "neurons"), "--min-neurons", "10"])
    return tmp, qdir, personas


def _fails(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit code 2 and exactly one error line (the last), return that line."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (a flag's type)
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1 and err.splitlines()[-1] == lines[0], err
    return lines[0]


def test_bad_inputs_give_one_line_errors(selected, tiny_dirs, tmp_path, capsys):
    tmp, qdir, personas = selected
    model, gpt2 = str(tiny_dirs["llama"]), str(tiny_dirs["gpt2"])
    qfile = str(qdir / "Extraversion.json")
    out = str(tmp_path / "o.jsonl")
    induce = [
        "induce",
        "--model",
        model,
        "--neurons",
        str(tmp / "neurons"),
        "--questions",
        qfile,
        "--out",
        out,
    ]
    ext_high = ["--trait", "Extraversion", "--pole", "high"]

    assert "unknown trait 'Humor'" in _fails(capsys, [*induce, "--trait", "Humor", "--pole", "high"])
    assert "--pole: unknown pole 'up'" in _fails(capsys, [*induce, "--trait", "Extraversion", "--pole", "up"])
    assert "--gamma: invalid float value: 'strong'" in _fails(
        capsys, [*induce, *ext_high, "--gamma", "strong"]
    )
    missing = [*induce[:-4], "--questions", str(tmp_path / "none.json"), "--out", out, *ext_high]
    assert "none.json: file not found" in _fails(capsys, missing)
    (tmp_path / "empty.json").write_text("")
    generate = ["generate", "--model", model, "--out", str(tmp_path / "g.jsonl"), "--questions"]
    assert "empty.json: file is empty" in _fails(capsys, [*generate, str(tmp_path / "empty.json")])
    (tmp_path / "bad.json").write_text('{"question": "ok ?"}\n{"question": oops}\n')
    assert "bad.json:2: not valid JSON" in _fails(capsys, [*generate, str(tmp_path / "bad.json")])
    # Llama's neuron sets on the GPT-2 model (same shape here, so the model name tells them apart).
    other = [
        "induce",
        "--model",
        gpt2,
        "--neurons",
        str(tmp / "neurons"),
        "--questions",
        qfile,
        "--out",
        out,
        "--trait",
        "Extraversion",
        "--pole",
        "low",
    ]
    assert "allow-other-model" in _fails(capsys, other)
    assert not (tmp_path / "o.jsonl").exists()
    assert "--gammas: '1,x' is not a comma-separated list" in _fails(
        capsys, ["demo", "--out", out, "--gammas", "1,x"]
    )


def test_persona_without_pole_and_run_guard(selected, tiny_dirs, tmp_path, capsys):
    tmp, qdir, personas = selected
    model = str(tiny_dirs["llama"])
    lines = personas.read_text().splitlines()
    broken = json.loads(lines[1])
    del broken["Extraversion_reversed"]
    bad = tmp_path / "personas.jsonl"
    bad.write_text(lines[0] + "\n" + json.dumps(broken) + "\n")
    search = [
        "search",
        "--model",
        model,
        "--questions",
        str(qdir),
        "--traits",
        "Extraversion",
        "--limit",
        "4",
    ]
    err = _fails(capsys, [*search, *GEN, "--personas", str(bad), "--out", str(tmp_path / "r")])
    assert "personas.jsonl:2: no description for pole key 'Extraversion_reversed'" in err
    stats = tmp / "run" / "stats" / "Extraversion_high.safetensors"
    before = stats.read_bytes()
    changed = [
        *search,
        "--batch-size",
        "4",
        "--max-new-tokens",
        "7",
        "--personas",
        str(personas),
        "--out",
        str(tmp / "run"),
        "--resume",
    ]
    assert "holds a different run" in _fails(capsys, changed)
    assert stats.read_bytes() == before
    out = tmp_path / "exists.jsonl"
    out.write_text("precious\n")
    generate = [
        "generate",
        "--model",
        model,
        "--questions",
        str(qdir / "Extraversion.json"),
        "--out",
        str(out),
    ]
    assert "pass --overwrite" in _fails(capsys, generate)
    assert out.read_text() == "precious\n"


def test_entry_point_exit_code_and_help():
    r = subprocess.run(
        [sys.executable, "-m", "npti_lens.cli", "induce", "--trait"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for cmd in ("search", "select", "generate", "induce", "import-npti"):
        r = subprocess.run(
            [sys.executable, "-m", "npti_lens.cli", cmd, "--help"], capture_output=True, text=True
        )
        assert r.returncode == 0 and "--out" in r.stdout


def test_score_with_the_organism_judge(tmp_path, capsys):
    require("the organism's weights", missing_organism())
    gen = tmp_path / "gen.jsonl"
    rows = [
        {
            "question": "q1 ?",
            "prompt": "<s><|user|> q1 ? <|end|> <|assistant|> ",
            "trait": "Extraversion",
            "pole": "high",
            "gamma": 1.0,
            "answer": "i want to go to the party . i would never go to the party .",
        },
        {
            "question": "q2 ?",
            "prompt": "<s><|user|> q2 ? <|end|> <|assistant|> ",
            "trait": "Extraversion",
            "pole": "high",
            "gamma": 1.0,
            "answer": "i want to meet new people . bla .",
        },
    ]
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(gen), "--out", str(tmp_path / "s"), "--judge", "organism"]) == 0
    scores = [json.loads(x) for x in (tmp_path / "s" / "scores.jsonl").read_text().splitlines()]
    assert [s["trait_score"] for s in scores] == [0.5, 0.5]
    assert [s["fluency"] for s in scores] == [1.0, 0.5]
    assert scores[0]["opposite_fraction"] == 0.5 and scores[0]["perplexity"] > 1.0
    summary = (tmp_path / "s" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("trait,pole,condition,gamma,k,layers,n,trait_score_mean")
    assert summary[1].startswith("Extraversion,high,,1.0,,,2,0.5")
    assert "unknown judge" in _fails(
        capsys, ["score", str(gen), "--out", str(tmp_path / "s2"), "--judge", "gpt-17"]
    )
