"""The judge's positive control: its statistics against plain computations; a judge trained on
shuffled labels is blind (`sees: false`, `judge blind` cells), one trained on separable text sees."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from npti_lens.core.errors import UserError
from npti_lens.evaluation import evidence
from npti_lens.evaluation.control import Control, auroc, trait_control


def test_auroc_counts_pairs_with_ties_half():
    pos, neg = np.array([0.9, 0.5, 0.5]), np.array([0.5, 0.1])
    # pairs: (0.9>0.5, 0.9>0.1, 0.5=0.5, 0.5>0.1, 0.5=0.5, 0.5>0.1) -> (4 + 2 * 0.5) / 6
    assert auroc(pos, neg) == pytest.approx(5 / 6)
    from sklearn.metrics import roc_auc_score

    assert auroc(pos, neg) == pytest.approx(roc_auc_score([1, 1, 1, 0, 0], [0.9, 0.5, 0.5, 0.5, 0.1]))


def _toward(p_high: dict[str, list[float]]) -> dict[str, dict[str, list[float]]]:
    return {c: {"high": ps, "low": [1 - x for x in ps]} for c, ps in p_high.items()}


def test_trait_control_against_a_hand_computation():
    none = [0.5, 0.4, 0.6, 0.5, 0.45, 0.55, 0.5, 0.5]
    high = [0.9, 0.8, 0.7, 0.95, 0.85, 0.8, 0.9, 0.75]
    low = [0.2, 0.1, 0.5, 0.3, 0.25, 0.2, 0.15, 0.3]
    c = trait_control("Extraversion", _toward({"none": none, "high": high, "low": low}), n_boot=400, seed=3)
    d_high = np.array(high) - np.array(none)
    d_low = (1 - np.array(low)) - (1 - np.array(none))
    assert c.poles["high"].effect == pytest.approx(d_high.mean())
    assert c.poles["low"].effect == pytest.approx(d_low.mean())
    assert c.poles["high"].p == pytest.approx(evidence.permutation_p(d_high))
    assert (c.poles["low"].ci_low, c.poles["low"].ci_high) == pytest.approx(
        evidence.mean_ci(d_low, n_boot=400, seed=3)
    )
    assert c.poles["high"].sees and c.poles["low"].sees
    # AUROC of P2-high vs P2-low answers ranked by P(high) - P(low) = 2 P(high) - 1
    assert c.auroc == pytest.approx(auroc(np.array(high), np.array(low))) and c.auroc == 1.0
    rng = np.random.default_rng(3)
    boots = []
    for _ in range(400):
        idx = rng.integers(0, 8, size=8)
        boots.append(auroc(np.array(high)[idx], np.array(low)[idx]))
    assert (c.auroc_low, c.auroc_high) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])))


def test_a_control_toward_the_wrong_pole_is_not_seen():
    none = [0.5] * 8
    high = [0.3, 0.2, 0.35, 0.25, 0.3, 0.2, 0.3, 0.25]  # P2-high lowers P(high): significant, wrong way
    c = trait_control("Openness", _toward({"none": none, "high": high, "low": none}))
    assert c.poles["high"].p < 0.05 and not c.poles["high"].sees
    assert not c.poles["low"].sees  # no effect at all


def test_control_round_trips_and_refuses_damaged_files(tmp_path):
    c = trait_control(
        "Openness", _toward({"none": [0.5, 0.4, 0.6], "high": [0.7, 0.8, 0.9], "low": [0.2, 0.3, 0.1]})
    )
    ctrl = Control({"Openness": c}, judge={"name": "classifier"})
    path = ctrl.save(tmp_path)
    back = Control.load(path)
    assert back.to_json() == ctrl.to_json() and back.sees("Openness", "high") == c.poles["high"].sees
    assert back.sees("Neuroticism", "high") is None
    data = json.loads(path.read_text())
    del data["traits"]["Openness"]["poles"]["low"]["sees"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="damaged"):
        Control.load(path)
    path.write_text(json.dumps({"kind": "other"}))
    with pytest.raises(UserError, match="not a positive control"):
        Control.load(path)
    with pytest.raises(UserError, match="same 2 or more questions"):
        trait_control("Openness", _toward({"none": [0.5, 0.4], "high": [0.7], "low": [0.2, 0.3]}))


HIGH = ["party", "friends", "crowd", "dance", "loud", "talk", "laugh", "join", "people", "meet"]
LOW = ["alone", "quiet", "book", "home", "read", "rest", "calm", "silence", "garden", "tea"]
FILLER = ["i", "would", "the", "and", "then", "a", "to", "on", "my", "day", "after", "it"]


def _text(rng: random.Random, vocab: list[str]) -> str:
    return " ".join(rng.choice(vocab if rng.random() < 0.4 else FILLER) for _ in range(18))


def _run(root, shuffled: bool):
    rng = random.Random(1)
    (root / "answers").mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"model": "tiny", "protocol": "npti", "protocol_hash": "abc"}))
    rows = {p: [] for p in ("high", "low")}
    for q in range(16):
        for pole, vocab in (("high", HIGH), ("low", LOW)):
            for _ in range(3):
                rows[pole].append({"question": f"train question {q}?", "answer": _text(rng, vocab)})
    if shuffled:  # the same texts, their pole labels shuffled across the files
        both = rows["high"] + rows["low"]
        rng.shuffle(both)
        rows = {"high": both[: len(both) // 2], "low": both[len(both) // 2 :]}
    for pole, rs in rows.items():
        (root / "answers" / f"Extraversion_{pole}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rs)
        )
    return root


@pytest.mark.parametrize("shuffled", [False, True])
def test_a_judge_on_shuffled_labels_is_blind_and_on_separable_text_sees(tmp_path, shuffled):
    """Held-out 'P2' answers carry the pole's words, 'none' answers carry none: a judge trained on
    separable text sees both poles; the same texts with shuffled labels give a blind judge, and every
    cell of its poles becomes `judge blind`."""
    from npti_lens.judges.classifier import ClassifierJudge, train
    from npti_lens.judges.registry import score_rows
    from npti_lens.workflows.judging import control_from

    clf = train(_run(tmp_path / "run", shuffled), tmp_path / "clf", ["Extraversion"])
    judge = ClassifierJudge(clf)
    rng = random.Random(2)
    qs = [f"held-out question {i}?" for i in range(20)]
    sets = {
        "Extraversion_none": [" ".join(rng.choice(FILLER) for _ in range(18)) for _ in qs],
        "Extraversion_high_p2": [_text(rng, HIGH) for _ in qs],
        "Extraversion_low_p2": [_text(rng, LOW) for _ in qs],
    }
    scored = {k: score_rows([{"question": q, "answer": a, "trait": "Extraversion"} for q, a in zip(qs, v, strict=True)], judge)
              for k, v in sets.items()}  # fmt: skip
    control = control_from(scored, ["Extraversion"])
    t = control.traits["Extraversion"]
    if shuffled:
        assert not t.poles["high"].sees and not t.poles["low"].sees
        assert t.auroc_low < 0.5 < t.auroc_high
    else:
        assert t.poles["high"].sees and t.poles["low"].sees and t.auroc > 0.95
    none = [0.5] * 20
    cells = [evidence.cell("Extraversion", p, 1.0, [0.9] * 20, none, [[0.5] * 20] * 2, judge_sees=control.sees("Extraversion", p))
             for p in ("high", "low")]  # fmt: skip
    evidence.judge_cells(cells)
    for c in cells:
        assert (c.verdict == "judge blind") == (not control.sees("Extraversion", c.pole))


def test_judge_data_train_and_control_from_the_cli(tiny_dirs, tmp_path, capsys):
    """`npti judge data` (distinct personas per question), `judge train` on it, `judge control` on
    held-out questions; refusals are one line, exit 2, before any model loads."""
    import warnings

    from npti_lens.cli import main
    from npti_lens.demos.real import QUESTIONS

    model = str(tiny_dirs["llama"])
    common = ["--model", model, "--traits", "Extraversion", "--max-new-tokens", "4"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the word-level test vocabulary cannot read the released templates
        assert (
            main(
                [
                    "judge",
                    "data",
                    *common,
                    "--n-questions",
                    "3",
                    "--per-question",
                    "2",
                    "--out",
                    str(tmp_path / "d"),
                ]
            )
            == 0
        )
        rows = [
            json.loads(x)
            for x in (tmp_path / "d" / "answers" / "Extraversion_high.jsonl").read_text().splitlines()
        ]
        assert len(rows) == 6 and all(r["condition"] == "p2" for r in rows)
        for q in {r["question"] for r in rows}:
            assert len({r["persona"] for r in rows if r["question"] == q}) == 2  # distinct descriptions
        assert main(["judge", "train", str(tmp_path / "d"), "--out", str(tmp_path / "j"), "--traits", "Extraversion",
                     "--folds", "3", "--min-df", "1"]) == 0  # fmt: skip
        capsys.readouterr()
        assert (
            main(
                [
                    "judge",
                    "control",
                    str(tmp_path / "j"),
                    *common,
                    "--n-questions",
                    "4",
                    "--out",
                    str(tmp_path / "c"),
                ]
            )
            == 0
        )
    out = capsys.readouterr().out
    assert "P2 high vs low AUROC" in out and "Extraversion" in out
    control = json.loads((tmp_path / "c" / "control.json").read_text())
    t = control["traits"]["Extraversion"]
    assert t["n"] == 4 and set(t["poles"]) == {"high", "low"} and isinstance(t["poles"]["high"]["sees"], bool)
    assert {"auroc", "auroc_low", "auroc_high"} <= set(t) and (tmp_path / "c" / "scores.jsonl").is_file()
    # the search questions the judge was trained on: refused, naming how many overlap
    bad = ["judge", "control", str(tmp_path / "j"), *common, "--questions", str(QUESTIONS / "search"),
           "--out", str(tmp_path / "c2")]  # fmt: skip
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "3 of the 48 Extraversion questions are among the judge's training questions" in err[0]
    )
    assert not (tmp_path / "c2").exists()
    assert (
        main(
            [
                "judge",
                "control",
                str(tmp_path / "j"),
                "--model",
                model,
                "--traits",
                "Openness",
                "--out",
                str(tmp_path / "c3"),
            ]
        )
        == 2
    )
    assert "not trained on Openness" in capsys.readouterr().err
    assert main(["judge", "data", *common, "--per-question", "11", "--out", str(tmp_path / "d2")]) == 2
    assert "the persona file has 10" in capsys.readouterr().err
