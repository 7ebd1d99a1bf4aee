"""The real-model demo's workflow on a tiny model: every table, cell and file; a killed demo resumes
to the same results; choices follow the fluency floor. (SmolLM2's own numbers: docs/smollm2.md, benchmarks.)"""

from __future__ import annotations

import warnings

import pytest

import npti_lens.demo_real as dr
from npti_lens.demo_real import RealDemoConfig, run_real_demo, strongest_fluent

CFG = RealDemoConfig(traits="Extraversion", n_search=4, n_test=3, max_new_tokens=6, gammas="0.5,4",
                     control_draws=2, methods="npti,vector,simple,p2", vector_coefs="1", batch_size=8,
                     fluency_floor=0.0, min_neurons=8, threshold=0.9)  # fmt: skip


def test_strongest_fluent_respects_the_floor():
    pts = [{"strength": 1, "effect": 0.1, "fluency": 0.95}, {"strength": 2, "effect": 0.3, "fluency": 0.5},
           {"strength": 3, "effect": 0.1, "fluency": 0.99}]  # fmt: skip
    assert strongest_fluent(pts, 0.9)["strength"] == 1  # tie on effect: the smaller strength
    assert strongest_fluent(pts, 0.4)["strength"] == 2
    assert strongest_fluent(pts, 0.999) is None


@pytest.fixture(scope="module")
def demo(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_real")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the word-level test vocabulary cannot read the released templates
        return run_real_demo(tiny_models["llama"], CFG, out), out


def test_tables_cells_and_files(demo):
    result, out = demo
    conds = {(r["pole"], r["condition"], r["strength"]) for r in result.rows}
    for p in ("high", "low"):
        assert {(p, "none", None), (p, "npti", 0.5), (p, "npti", 4.0), (p, "simple", None), (p, "p2", None),
                (p, "vector", 1.0)} <= conds  # fmt: skip
        assert (p, "random", 4.0) in conds or (p, "random", 0.5) in conds
    assert {(c.method, c.pole) for c in result.cells} == {
        (m, p) for m in ("npti", "vector") for p in ("high", "low")
    }
    for c in result.cells:
        assert c.n == 3 and c.k == 2 and c.verdict and 0 <= c.none <= 1
    randoms = [r for r in result.rows if r["condition"] == "random"]
    assert all(r["n"] == 2 * 3 for r in randoms)  # every draw's answers
    for path in result.files.values():
        assert path.is_file() and path.stat().st_size > 0
    v = result.validity["Extraversion"]
    assert v["p2_n"] == 6 and 0 <= v["p2_accuracy"] <= 1 and "accuracy" in v
    assert (out / "classifier" / "cfg.json").is_file() and (out / "run" / "run.json").is_file()


def test_a_killed_demo_resumes_to_the_same_results(demo, tiny_models, tmp_path, monkeypatch):
    first, _ = demo
    calls = {"n": 0}
    real = dr.answer

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dr, "answer", dying)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            run_real_demo(tiny_models["llama"], CFG, tmp_path)
        kept = len(list((tmp_path / "answers").glob("*.jsonl")))
        assert kept == 4
        monkeypatch.setattr(dr, "answer", real)
        again = run_real_demo(tiny_models["llama"], CFG, tmp_path)
    assert again.rows == first.rows
    assert [c.verdict for c in again.cells] == [c.verdict for c in first.cells]


def test_another_config_in_the_same_folder_is_refused(demo, tiny_models):
    from dataclasses import replace

    from npti_lens.errors import UserError

    _, out = demo
    with pytest.raises(UserError, match="another model or config"):
        run_real_demo(tiny_models["llama"], replace(CFG, gammas="1"), out)


def test_ablation_scored_by_the_classifier_from_the_cli(demo, tiny_dirs, tmp_path, capsys):
    import json

    from npti_lens.cli import main

    _, out = demo
    q = tmp_path / "q.jsonl"
    q.write_text(
        "".join(json.dumps({"question": x}) + "\n" for x in ("what would you do ?", "how do you feel ?"))
    )
    args = ["analyze", "ablation", "--model", str(tiny_dirs["llama"]), "--neurons", str(out / "neurons"),
            "--trait", "Extraversion", "--pole", "high", "--questions", str(q), "--out", str(tmp_path / "abl"),
            "--judge", "classifier", "--classifier", str(out / "classifier"), "--max-new-tokens", "4",
            "--gammas", "1", "--top-k", "4", "--control-draws", "2", "--protocol", "npti"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    scored = [json.loads(x) for x in (tmp_path / "abl" / "scores.jsonl").read_text().splitlines()]
    assert scored and all(r["judge"] == "classifier" and 0 <= r["trait_score"] <= 1 for r in scored)
    assert all("fluency" in r and "degenerate" in r and r["ppl"] is None or r["ppl"] > 0 for r in scored)
    assert (tmp_path / "abl" / "evidence.csv").is_file()
    bad = [*args[:-2], "--protocol", "npti"]
    bad[bad.index("--classifier") + 1] = str(tmp_path / "nowhere")
    bad[bad.index("--out") + 1] = str(tmp_path / "abl2")
    assert main(bad) == 2
    assert "no classifier" in capsys.readouterr().err
    assert not (tmp_path / "abl2" / "generations.jsonl").exists()


def test_some_traits_of_a_demo_can_be_tabled_again(demo, tiny_models):
    import json

    first, out = demo
    state = json.loads((out / "demo.json").read_text())
    state["config"]["traits"] = "all"  # as a demo of every trait records it
    (out / "demo.json").write_text(json.dumps(state))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = run_real_demo(tiny_models["llama"], CFG, out)
    assert again.rows == first.rows  # every answer set read back, nothing regenerated


def test_the_cli_continues_a_real_model_demo_in_its_folder(tiny_dirs, tmp_path, capsys):
    """`npti demo --model M --out D` a second time continues D (its answers are checkpoints) instead of
    asking for --overwrite; another config there is one line and exit 2."""
    from npti_lens.cli import main

    argv = ["demo", "--model", str(tiny_dirs["llama"]), "--out", str(tmp_path / "d"), "--traits", "Extraversion",
            "--n-search", "4", "--n-test", "3", "--max-new-tokens", "4", "--gammas", "4", "--control-draws", "1",
            "--methods", "npti", "--batch-size", "8", "--fluency-floor", "0", "--min-neurons", "8",
            "--threshold", "0.9"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
        first = (tmp_path / "d" / "demo_results.csv").read_text()
        assert main(argv) == 0
        assert (tmp_path / "d" / "demo_results.csv").read_text() == first
        capsys.readouterr()
        assert main([*argv[:-2], "--threshold", "0.8"]) == 2
    assert "holds a demo of another model or config" in capsys.readouterr().err
