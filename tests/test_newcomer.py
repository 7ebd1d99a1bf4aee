"""A newcomer's first hour: the getting-started organism example as written, every --help, and bad input
(damaged files, taken or unwritable outputs, out-of-range numbers) as one-line errors with exit 2
that leave earlier results byte for byte as they were."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from npti_lens.cli import build_parser, main
from tests.helpers import write_data

GETTING_STARTED = Path(__file__).resolve().parents[1] / "docs" / "getting-started.md"
GEN = ["--max-new-tokens", "3", "--batch-size", "4"]


def _fails(capsys, argv: list[str]) -> str:
    """Exit code 2 and exactly one line on stderr; returns it."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = [
        x
        for x in err.strip().splitlines()
        if ": warning: " not in x and "it/s" not in x and "batch/s" not in x
    ]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----- the README and --help ---------------------------------------------------------------------


def _readme_block(heading: str) -> list[str]:
    text = GETTING_STARTED.read_text(encoding="utf-8")
    block = text.split(heading, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def test_readme_organism_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = _readme_block("### On the shipped organism")
    assert commands and all(c.startswith("npti ") for c in commands)
    for c in commands:
        assert main(shlex.split(c)[1:]) == 0, c
    out = capsys.readouterr().out
    assert "Neuroticism_low: 51 neurons, 51 with diff > 0, 0 shared with Neuroticism_high" in out

    def mean(name: str, col: str) -> float:
        rows = (tmp_path / "org" / "scores" / name / "summary.csv").read_text().splitlines()
        head, row = rows[0].split(","), rows[1].split(",")
        return float(row[head.index(col)])

    # the numbers the page states
    assert round(mean("none", "trait_score_mean"), 3) == 0.050
    assert round(mean("npti", "trait_score_mean"), 3) == 0.967
    assert round(mean("simple", "trait_score_mean"), 3) == 1.000
    assert all(mean(n, "fluency_mean") == 1.0 for n in ("none", "npti", "simple"))
    none_rows = [json.loads(x) for x in (tmp_path / "org/scores/none/scores.jsonl").read_text().splitlines()]
    assert {(r["trait"], r["pole"]) for r in none_rows} == {("Neuroticism", "low")}  # --trait/--pole kept
    assert (tmp_path / "org" / "figures" / "method_comparison.png").is_file()


def _subcommands(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append([*prefix, name])
                out += _subcommands(sub, [*prefix, name])
    return out


def test_help_of_every_subcommand(capsys):
    commands = _subcommands(build_parser(), [])
    assert ["demo"] in commands and ["analyze", "ablation"] in commands and len(commands) > 15
    for c in [[], *commands]:
        with pytest.raises(SystemExit) as e:
            main([*c, "--help"])
        assert e.value.code == 0, c
        assert "usage: npti" in capsys.readouterr().out


def test_demo_help_in_a_subprocess():
    res = subprocess.run(
        [sys.executable, "-m", "npti_lens.cli", "demo", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0 and "Traceback" not in res.stderr and "15%" in res.stdout


# ----- the organism: unreadable prompts and selections that do not separate the poles --------------


def test_unknown_tokens_warn(tmp_path, capsys):
    assert main(["data", "sample", "--out", str(tmp_path / "sample")]) == 0
    q = tmp_path / "sample" / "test" / "Extraversion.json"
    argv = ["generate", "--model", "organism", "--questions", str(q), "--limit", "2", *GEN]
    assert main([*argv, "--out", str(tmp_path / "g.jsonl")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: \d+% of the prompt tokens are <unk>", err) and "npti organism data" in err
    assert main(["organism", "data", "--out", str(tmp_path / "org")]) == 0
    q = tmp_path / "org" / "test" / "Extraversion.json"
    argv = ["generate", "--model", "organism", "--questions", str(q), "--limit", "2", *GEN]
    assert main([*argv, "--out", str(tmp_path / "h.jsonl")]) == 0
    assert "<unk>" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dirs):
    """A finished search of two traits on the tiny Llama."""
    root = tmp_path_factory.mktemp("newcomer")
    qdir, personas = write_data(root, traits=("Extraversion", "Agreeableness"))
    run = root / "run"
    argv = ["search", "--model", str(tiny_dirs["llama"]), "--questions", str(qdir), "--personas",
            str(personas), "--out", str(run), "--traits", "Extraversion,Agreeableness", *GEN]  # fmt: skip
    assert main(argv) == 0
    return run


def test_select_reports_and_warns_when_the_minimum_forces_neurons_in(run_dir, tmp_path, capsys):
    assert main(["select", str(run_dir), "--out", str(tmp_path / "n")]) == 0  # default: 2000 of 288
    captured = capsys.readouterr()
    m = re.search(r"Extraversion_high: (\d+) neurons, (\d+) with diff > 0, (\d+) shared", captured.out)
    kept, positive, shared = map(int, m.groups())
    from npti_lens.method.neurons import load_pole

    ns = load_pole(tmp_path / "n", "Extraversion", "high")
    opp = load_pole(tmp_path / "n", "Extraversion", "low")
    assert kept == len(ns) == 288 and positive == int((ns.diff > 0).sum()) < kept
    assert shared == int(torch.isin(ns.flat(), opp.flat()).sum()) > 0
    assert f"warning: Extraversion_high: {kept - positive} of {kept} neurons have diff <= 0" in captured.err
    assert "shares" in captured.err
    assert (
        main(
            ["select", str(run_dir), "--out", str(tmp_path / "m"), "--min-neurons", "0", "--threshold", "0.5"]
        )
        == 0
    )
    assert "warning" not in capsys.readouterr().err


# ----- damaged inputs -----------------------------------------------------------------------------


def _copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def test_damaged_statistics_are_named_before_anything_is_written(run_dir, tmp_path, capsys):
    stats = "stats/Agreeableness_low.safetensors"
    cases = {}
    run = _copy_run(run_dir, tmp_path / "flip")
    data = bytearray((run / stats).read_bytes())
    data[len(data) // 2] ^= 0x5A  # one byte mid-file
    (run / stats).write_bytes(bytes(data))
    cases["flip"] = (run, "checksum does not match")
    run = _copy_run(run_dir, tmp_path / "trunc")
    (run / stats).write_bytes((run / stats).read_bytes()[:1000])
    cases["trunc"] = (run, "damaged statistics file")
    run = _copy_run(run_dir, tmp_path / "empty")
    (run / stats).write_bytes(b"")
    cases["empty"] = (run, "damaged statistics file")
    run = _copy_run(run_dir, tmp_path / "gone")
    (run / stats).unlink()  # its .json is kept: the trait is not silently dropped
    cases["gone"] = (run, "no statistics for Agreeableness_low")
    for name, (run, want) in cases.items():
        out = tmp_path / f"out_{name}"
        err = _fails(capsys, ["select", str(run), "--out", str(out), "--min-neurons", "5"])
        assert want in err and "Agreeableness_low" in err, (name, err)
        assert not out.exists(), name  # nothing partial
    # an edit that keeps the file readable but breaks the counts is caught by validation
    from safetensors.torch import load_file, save_file

    run = _copy_run(run_dir, tmp_path / "counts")
    t = load_file(str(run / stats))
    t["n_active"][0, 0] += 1
    save_file(t, str(run / stats))  # no checksum header: as an older or hand-made file
    err = _fails(capsys, ["select", str(run), "--out", str(tmp_path / "out_counts")])
    assert "n_active differs from the histogram" in err


def test_damaged_neuron_sets_and_non_utf8_questions(run_dir, tiny_dirs, tmp_path, capsys):
    neurons = tmp_path / "n"
    assert main(["select", str(run_dir), "--out", str(neurons), "--min-neurons", "5"]) == 0
    qdir, _ = write_data(tmp_path)
    induce = ["induce", "--model", str(tiny_dirs["llama"]), "--neurons", str(neurons), "--trait", "Extraversion",
              "--pole", "high", "--questions", str(qdir / "Extraversion.json"), *GEN]  # fmt: skip
    f = neurons / "Extraversion_high" / "neurons.safetensors"
    good = f.read_bytes()
    f.write_bytes(good[: len(good) // 2])
    err = _fails(capsys, [*induce, "--out", str(tmp_path / "a.jsonl")])
    assert "neurons.safetensors: damaged neuron set" in err
    from safetensors.torch import load_file, save_file

    f.write_bytes(good)
    t = load_file(str(f))
    t["q95"][3] = float("nan")
    save_file(t, str(f))
    err = _fails(capsys, [*induce, "--out", str(tmp_path / "b.jsonl")])
    assert "column q95 holds NaN" in err
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"question": "ok ?"}\n{"question": "caf\xe9 ?"}\n')
    err = _fails(capsys, ["generate", "--model", str(tiny_dirs["llama"]), "--questions", str(bad), "--out", str(tmp_path / "c.jsonl")])  # fmt: skip
    assert "latin1.json:2: byte 0xe9 is not UTF-8" in err
    assert not any((tmp_path / f"{c}.jsonl").exists() for c in "abc")


# ----- outputs ----------------------------------------------------------------------------------


def test_outputs_are_checked_before_the_model_loads_and_never_overwritten(
    run_dir, tiny_dirs, tmp_path, capsys
):
    qdir, personas = write_data(tmp_path)
    q = str(qdir / "Extraversion.json")
    model = str(tiny_dirs["llama"])
    gen = tmp_path / "g.jsonl"
    assert main(["generate", "--model", model, "--questions", q, "--out", str(gen), *GEN]) == 0
    capsys.readouterr()
    # score: another file's scores are not replaced; the same file may be scored again (a resume)
    scores = tmp_path / "scores"
    assert main(["score", str(gen), "--out", str(scores), "--judge", "organism", "--trait", "Extraversion", "--pole", "high"]) == 0  # fmt: skip
    before = _snapshot(scores)
    other = tmp_path / "other.jsonl"
    other.write_text(
        json.dumps({"question": "q ?", "answer": "i go out .", "trait": "Extraversion", "pole": "low"}) + "\n"
    )
    err = _fails(capsys, ["score", str(other), "--out", str(scores), "--judge", "organism"])
    assert "holds scores of" in err and "--overwrite" in err and _snapshot(scores) == before
    assert main(["score", str(gen), "--out", str(scores), "--judge", "organism", "--trait", "Extraversion", "--pole", "high"]) == 0  # fmt: skip
    # demo: refused before any work
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "demo_results.csv").write_text("trait,pole\n")
    before = _snapshot(demo)
    err = _fails(capsys, ["demo", "--out", str(demo)])
    assert "already holds demo_results.csv" in err and _snapshot(demo) == before
    # an existing file where a folder is wanted, and the reverse, and a path under a file
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    search = [
        "search",
        "--model",
        "/nonexistent/model",
        "--questions",
        str(qdir),
        "--personas",
        str(personas),
    ]
    assert "is a file, not a folder" in _fails(capsys, ["select", str(run_dir), "--out", str(a_file)])
    assert "is a file, not a folder" in _fails(capsys, [*search, "--out", str(a_file)])
    assert "is a file, not a folder" in _fails(capsys, ["score", str(gen), "--out", str(a_file)])
    assert "which is a file" in _fails(capsys, ["generate", "--model", model, "--questions", q, "--out", str(a_file / "x.jsonl")])  # fmt: skip
    err = _fails(
        capsys, ["generate", "--model", model, "--questions", q, "--out", str(tmp_path), "--overwrite"]
    )
    assert "is a folder, not a file" in err
    assert a_file.read_text() == "keep me"


def test_written_files_follow_the_umask(tmp_path):
    from npti_lens.core.files import write_text_atomic

    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    write_text_atomic(tmp_path / "b.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o666 & ~old


# ----- numbers and flags --------------------------------------------------------------------------


def test_numbers_and_flags_out_of_range(run_dir, tiny_dirs, tmp_path, capsys, monkeypatch):
    qdir, _ = write_data(tmp_path)
    q = str(qdir / "Extraversion.json")
    model = str(tiny_dirs["llama"])
    gen = ["generate", "--model", model, "--questions", q, *GEN]
    out = ["--out", str(tmp_path / "x.jsonl")]
    assert "--limit: -1 is not 1 or more" in _fails(capsys, [*gen, *out, "--limit", "-1"])
    assert "--limit: 0 is not 1 or more" in _fails(capsys, [*gen, *out, "--limit", "0"])
    sel = ["select", str(run_dir), "--out", str(tmp_path / "n")]
    assert "--threshold: nan" in _fails(capsys, [*sel, "--threshold", "nan"])
    assert "--min-neurons: -5 is negative" in _fails(capsys, [*sel, "--min-neurons", "-5"])
    assert not (tmp_path / "n").exists()
    long_q = tmp_path / "long.json"
    long_q.write_text(json.dumps({"question": " ".join(["party"] * 100_000)}) + "\n")
    err = _fails(capsys, ["generate", "--model", model, "--questions", str(long_q), *out])
    assert "long.json:1: its prompt of" in err and "exceeds the model's 256 positions" in err
    gpt2 = ["generate", "--model", str(tiny_dirs["gpt2"]), "--questions", q, *out, "--max-new-tokens", "250"]
    assert "exceeds the model's 256 positions" in _fails(capsys, gpt2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device: cuda is not available" in _fails(capsys, [*gen, *out, "--device", "cuda"])
    assert "--model: no such folder" in _fails(capsys, ["generate", "--model", str(tmp_path / "no" / "model"), "--questions", q, *out])  # fmt: skip
    assert not (tmp_path / "x.jsonl").exists()


def test_an_induction_that_overflows_is_an_error(run_dir, tiny_dirs, tmp_path, capsys):
    neurons = tmp_path / "n"
    assert main(["select", str(run_dir), "--out", str(neurons), "--min-neurons", "50"]) == 0
    qdir, _ = write_data(tmp_path)
    argv = ["induce", "--model", str(tiny_dirs["llama"]), "--neurons", str(neurons), "--trait", "Extraversion",
            "--pole", "high", "--questions", str(qdir / "Extraversion.json"), *GEN, "--out", str(tmp_path / "i.jsonl")]  # fmt: skip
    capsys.readouterr()
    try:
        code = main([*argv, "--gamma", "1e38"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "warning: gamma 1e+38 is far outside" in err
    assert "infinite or NaN" in err.strip().splitlines()[-1] and "lower --gamma" in err
    assert not (tmp_path / "i.jsonl").exists()


# ----- flow --------------------------------------------------------------------------------------


def test_a_second_search_on_a_locked_run_and_ctrl_c_say_what_to_do(
    run_dir, tiny_dirs, tmp_path, capsys, monkeypatch
):
    import fcntl

    qdir, personas = write_data(tmp_path)
    run = tmp_path / "run"
    argv = ["search", "--model", str(tiny_dirs["llama"]), "--questions", str(qdir), "--personas",
            str(personas), "--out", str(run), "--traits", "Extraversion", *GEN]  # fmt: skip
    import npti_lens.workflows.search as search

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "search_pole", interrupted)
    assert main(argv) == 130
    assert "run the same command with --resume" in capsys.readouterr().err
    monkeypatch.undo()
    with open(run / ".lock", "a") as f:  # another search holds the folder
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        err = _fails(capsys, [*argv, "--resume"])
        assert "another npti search is writing to" in err
    assert main([*argv, "--resume"]) == 0


# ----- figures ------------------------------------------------------------------------------------


def test_figures_read_as_they_should(monkeypatch, tmp_path):
    import math

    from npti_lens.evaluation import figures
    from npti_lens.evaluation.overlap import layer_distribution
    from npti_lens.method.neurons import load_neuron_sets

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, pdf=False: drawn.append(fig))
    root = Path(__file__).resolve().parents[1]
    figures.layer_distribution(
        layer_distribution(load_neuron_sets(root / "neuron_results" / "organism")), tmp_path / "l.png"
    )
    ticks = drawn[-1].axes[0].get_xticks()
    assert all(float(t).is_integer() for t in ticks)  # no layer 0.5
    rows = [
        {"trait": "Extraversion", "pole": "high", "condition": c, "gamma": g, "score": v, "sem": 0.1}
        for c, g, v in [("none", None, 0.0), ("npti", 3.0, 0.5), ("p2", None, 1.0)]
    ]
    figures.method_comparison(rows, tmp_path / "m.png", gamma=3.0)
    ax = drawn[-1].axes[0]
    assert "P2 (persona)" in [t.get_text() for t in ax.get_legend().get_texts()]
    tops = [tuple(o) for c in ax.collections for o in c.get_offsets()]
    assert any(y == 0.0 for _, y in tops)  # the zero-height bar has its marker
    assert "SEM" in ax.get_ylabel()
    nan_rows = [
        {"condition": "none", "domain": t, "score": math.nan, "ci_low": math.nan, "ci_high": math.nan}
        for t in ("Openness", "Extraversion")
    ]
    figures.inventory_profile(nan_rows, tmp_path / "p.png")
    assert any("no scores" in t.get_text() for t in drawn[-1].axes[0].texts)
