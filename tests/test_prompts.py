"""Prompts: the lens protocol's persona and neutral prompts, the baselines, the baseline command."""

from __future__ import annotations

import json

from npti_lens.cli import main
from npti_lens.core.constants import POLES, TRAITS
from npti_lens.inputs.prompts import PERSONA_SYSTEM, persona_system
from npti_lens.method.protocol import load_protocol
from tests.helpers import write_data


def test_baseline_prompts():
    lens = load_protocol("lens")
    assert all(lens.adjective(t, p) for t in TRAITS for p in POLES)
    simple = lens.stage("simple").system
    assert (
        simple.format(personality=lens.adjective("Extraversion", "low")) == "You are an introverted person."
    )
    assert (
        simple.format(personality=lens.adjective("Agreeableness", "high")) == "You are an agreeable person."
    )
    # the persona prompt of lens and the organism is npti_lens 0.1's, which the organism was trained on
    for name in ("lens", "organism"):
        for stage in ("search", "p2"):
            system = load_protocol(name).stage(stage).system
            assert system == PERSONA_SYSTEM.replace("{description}", "{personality}")
    assert persona_system(" you love parties. ") == PERSONA_SYSTEM.format(description="you love parties.")


def test_baseline_command(tiny_dirs, tmp_path, capsys):
    qdir, personas = write_data(tmp_path)
    qfile = str(qdir / "Extraversion.json")
    model = str(tiny_dirs["llama"])
    common = [
        "--model",
        model,
        "--trait",
        "Extraversion",
        "--pole",
        "low",
        "--questions",
        qfile,
        "--max-new-tokens",
        "4",
        "--limit",
        "3",
        "--protocol",
        "lens",
    ]
    assert main(["baseline", "--method", "simple", *common, "--out", str(tmp_path / "s.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["method"] == "simple" and rows[0]["gamma"] is None
    assert rows[0]["condition"] == "simple"
    assert "<|system|> You are an introverted person." in rows[0]["prompt"]
    assert (
        main(
            [
                "baseline",
                "--method",
                "p2",
                *common,
                "--personas",
                str(personas),
                "--out",
                str(tmp_path / "p.jsonl"),
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    descs = {json.loads(x)["Extraversion_reversed"] for x in personas.read_text().splitlines()}
    assert all(any(d in r["prompt"] for d in descs) for r in rows)
    assert main(["baseline", "--method", "p3", *common, "--out", str(tmp_path / "x.jsonl")]) == 2
    assert main(["baseline", "--method", "p2", *common, "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "unknown baseline 'p3'" in err and "needs a persona file" in err
    assert {r["protocol"] for r in rows} == {"lens"}
