"""`npti tune`: the choice on a known curve, and a sweep on the organism through the CLI."""

from __future__ import annotations

import csv
import json

import pytest

from npti_lens.cli import main
from npti_lens.workflows.tune import choose

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_choose_picks_the_strongest_point_within_the_limits():
    curve = [
        {"strength": 0.5, "effect": 0.10, "fluency": 1.00, "delta_nll": 0.05},
        {"strength": 1.0, "effect": 0.30, "fluency": 0.95, "delta_nll": 0.20},
        {"strength": 2.0, "effect": 0.60, "fluency": 0.80, "delta_nll": 0.30},  # too disfluent
        {"strength": 3.0, "effect": 0.70, "fluency": 0.95, "delta_nll": 0.90},  # too costly
        {"strength": 1.5, "effect": 0.30, "fluency": 0.99, "delta_nll": 0.10},  # ties with 1.0
    ]
    assert choose(curve, 0.9, 0.5)["strength"] == 1.0  # the tie goes to the smaller strength
    assert choose(curve, 0.7, 0.5)["strength"] == 2.0
    assert choose(curve, 0.9, 1.0)["strength"] == 3.0
    assert choose(curve, 1.01, 1.0) is None


@pytest.mark.skipif(
    not (ROOT / "neuron_results" / "organism").is_dir(), reason="needs the shipped neuron sets"
)
def test_tune_on_the_organism(tmp_path, capsys):
    assert main(["organism", "data", "--out", str(tmp_path / "data")]) == 0
    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        "".join(
            json.dumps({"question": q, "answer": "i stay calm and i do not worry ."}) + "\n"
            for q in ("what do you do when a plan changes ?", "how do you feel before a test ?")
        )
    )
    base = ["tune", "--model", "organism", "--neurons", str(ROOT / "neuron_results" / "organism"),
            "--trait", "Neuroticism", "--pole", "low", "--questions", str(tmp_path / "data/test/Neuroticism.json"),
            "--limit", "6", "--texts", str(texts)]  # fmt: skip
    for method, strengths in (("npti", "1,3"), ("vector", "0.5,2")):
        out = tmp_path / method
        argv = [*base, "--method", method, "--strengths", strengths, "--out", str(out)]
        bands = ["all", "late"] if method == "vector" else [""]
        if method == "vector":
            argv += ["--layers", "all,late"]
        if method == "vector":  # the shipped sets have no direction: select them from a search first
            run = tmp_path / "run"
            assert main(["search", "--model", "organism", "--questions", str(tmp_path / "data/search"), "--personas",
                         str(tmp_path / "data/personas.jsonl"), "--out", str(run), "--traits", "Neuroticism",
                         "--limit", "8"]) == 0  # fmt: skip
            assert (
                main(
                    [
                        "select",
                        str(run),
                        "--out",
                        str(tmp_path / "n"),
                        "--threshold",
                        "0.2",
                        "--min-neurons",
                        "20",
                    ]
                )
                == 0
            )
            argv[argv.index("--neurons") + 1] = str(tmp_path / "n")
        assert main(argv) == 0
        rows = list(csv.DictReader((out / "tune.csv").open()))
        sweep = [(b, str(float(s))) for b in bands for s in strengths.split(",")]
        assert [(r["layers"], r["strength"]) for r in rows] == [("", ""), *sweep]
        choice = json.loads((out / "choice.json").read_text())["choice"]
        ok = [r for r in rows[1:] if float(r["fluency"]) >= 0.9 and float(r["delta_nll"]) <= 0.5]
        if ok:
            best = max(float(r["effect"]) for r in ok)
            assert choice is not None and choice["effect"] == pytest.approx(best)
        else:
            assert choice is None
        assert (out / "tune.png").is_file()
    printed = capsys.readouterr().out
    assert "effect" in printed and ("chosen:" in printed or "no strength keeps" in printed)
