"""The real-model demo's workflow on a tiny model: every table, cell and file; a killed demo resumes
to the same results; choices follow the fluency floor. (SmolLM2's own numbers: docs/smollm2.md, benchmarks.)"""

from __future__ import annotations

import json
import warnings

import pytest

from npti_lens.demos.dose import strongest_fluent
from npti_lens.demos.real import RealDemoConfig, run_real_demo
from npti_lens.workflows.answers import read_answers

CFG = RealDemoConfig(traits="Extraversion", n_search=4, n_test=3, max_new_tokens=6, gammas="0.5,4",
                     control_draws=2, methods="npti,vector,simple,p2", vector_coefs="1", batch_size=8,
                     fluency_floor=0.0, min_neurons=8, threshold=0.9, judge_answers=2)  # fmt: skip


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
                (p, "vector", 1.0), (p, "random", 0.5), (p, "random", 4.0), (p, "random-vector", 1.0)} <= conds  # fmt: skip
    assert {(c.method, c.pole) for c in result.cells} == {
        (m, p) for m in ("npti", "vector") for p in ("high", "low")
    }
    for c in result.cells:
        assert c.n == 3 and c.k == 2 and c.verdict and 0 <= c.none <= 1
        assert c.judge_sees == result.control.sees("Extraversion", c.pole)
        assert (c.verdict == "judge blind") == (c.judge_sees is False)
        assert c.p2 == pytest.approx(
            next(r["target"] for r in result.rows if (r["pole"], r["condition"]) == (c.pole, "p2"))
        )
    randoms = [r for r in result.rows if r["condition"] == "random"]
    assert all(r["n"] == 2 * 3 for r in randoms)  # every draw's answers
    for path in result.files.values():
        assert path.exists() and (path.is_dir() or path.stat().st_size > 0)
    assert sorted(x.name for x in (out / "dose").iterdir()) == [
        "Extraversion_high.png",
        "Extraversion_low.png",
    ]
    v = result.validity["Extraversion"]
    assert v["reader"] == "tfidf" and 0 <= v["p2_auroc_low"] <= v["p2_auroc"] <= v["p2_auroc_high"] <= 1
    assert [c["n_answers"] for c in v["learning_curve"]] == [8, 16]  # 4 questions, 2 poles, 1 and 2 answers
    assert (out / "judge" / "cfg.json").is_file() and (out / "run" / "run.json").is_file()
    assert (out / "judge_data" / "answers" / "Extraversion_high.jsonl").is_file()
    samples = (out / "samples.md").read_text()
    assert samples.count("## Extraversion") == 2 and "| none | P2 | NPTI gamma" in samples
    control = json.loads((out / "control.json").read_text())
    assert set(control["traits"]["Extraversion"]["poles"]) == {"high", "low"}


def test_the_demos_judge_never_saw_the_held_out_questions(demo):
    from npti_lens.judges.classifier import question_key

    result, out = demo
    trained = set(json.loads((out / "judge" / "cfg.json").read_text())["questions"]["Extraversion"])
    asked = {question_key(r["question"]) for r in read_answers(out / "answers" / "Extraversion_none.jsonl")}
    assert trained and asked and not trained & asked


def test_a_killed_demo_resumes_to_the_same_results(demo, tiny_models, tmp_path, monkeypatch):
    import npti_lens.workflows.answers as answers

    first, _ = demo
    calls = {"n": 0}
    real = answers.answer

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(answers, "answer", dying)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            run_real_demo(tiny_models["llama"], CFG, tmp_path)
        # the judge's two data sets, then two of the held-out sets, each written as it was made
        assert len(list((tmp_path / "judge_data" / "answers").glob("*.jsonl"))) == 2
        assert len(list((tmp_path / "answers").glob("*.jsonl"))) == 2
        monkeypatch.setattr(answers, "answer", real)
        again = run_real_demo(tiny_models["llama"], CFG, tmp_path)
    assert again.rows == first.rows
    assert [c.verdict for c in again.cells] == [c.verdict for c in first.cells]


def test_another_config_in_the_same_folder_is_refused(demo, tiny_models):
    from dataclasses import replace

    from npti_lens.core.errors import UserError

    _, out = demo
    with pytest.raises(UserError, match="another model or config"):
        run_real_demo(tiny_models["llama"], replace(CFG, gammas="1"), out)
    with pytest.raises(UserError, match="above 0"):
        run_real_demo(tiny_models["llama"], replace(CFG, gammas="0,1"), out)


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
            "--judge", "classifier", "--classifier", str(out / "judge"), "--max-new-tokens", "4",
            "--gammas", "1", "--top-k", "4", "--control-draws", "2", "--protocol", "npti"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    scored = [json.loads(x) for x in (tmp_path / "abl" / "scores.jsonl").read_text().splitlines()]
    assert scored and all(r["judge"] == "classifier" and 0 <= r["trait_score"] <= 1 for r in scored)
    assert all("fluency" in r and "degenerate" in r for r in scored)
    # the classifier's fluency has the unmodified model: a perplexity for every answer with text
    answered = [r for r in scored if r["answer"].strip()]
    assert answered and all(r["ppl"] > 0 for r in answered)
    assert all(r["ppl"] is None for r in scored if not r["answer"].strip())
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
            "--n-search", "4", "--n-test", "3", "--max-new-tokens", "6", "--gammas", "4", "--control-draws", "1",
            "--judge-answers", "2",
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


def test_the_sweep_stops_where_fluency_falls_below_the_floor(tmp_path):
    """On the organism (whose answers loop at high gamma) each pole walks up the ladder until its mean
    NPTI fluency first falls below the floor, and asks nothing stronger; the chosen strength is the
    largest effect among the fluent ones."""
    from npti_lens.model.load import load_model

    cfg = RealDemoConfig(traits="Neuroticism", n_search=6, n_test=6, max_new_tokens=24, gammas="1,4,16,64,256",
                         control_draws=1, methods="npti,p2", fluency_floor=0.8, min_neurons=20, threshold=0.2,
                         judge_answers=2, batch_size=16)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_real_demo(load_model("organism"), cfg, tmp_path)
    broke = 0
    for p in ("high", "low"):
        walked = [r for r in result.rows if (r["pole"], r["condition"]) == (p, "npti")]
        fl = [r["fluency"] for r in walked]
        assert [r["strength"] for r in walked] == [1, 4, 16, 64, 256][: len(walked)]
        assert all(f >= 0.8 for f in fl[:-1])  # every strength but the last held the floor
        choice = next(c for c in result.choices if (c["pole"], c["method"]) == (p, "npti"))
        if fl[-1] < 0.8:
            broke += 1
            assert choice["broke_at"] == walked[-1]["strength"]
        else:
            assert len(walked) == 5 and choice["broke_at"] is None
        randoms = [r["strength"] for r in result.rows if (r["pole"], r["condition"]) == (p, "random")]
        assert randoms == [r["strength"] for r in walked]  # the controls at every strength asked
        fluent = [r for r in walked if r["fluency"] >= 0.8]
        if fluent:
            none = next(r["target"] for r in result.rows if (r["pole"], r["condition"]) == (p, "none"))
            best = max(fluent, key=lambda r: (r["target"] - none, -r["strength"]))
            assert choice["chosen"] == best["strength"]
    assert broke >= 1  # the organism loops somewhere on this ladder
