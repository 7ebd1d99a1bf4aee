"""Capability retention: answer perplexity equals a per-sequence reference; inductions raise it."""

from __future__ import annotations

import math

import pytest
import torch

from npti_lens.evaluation.capability import answer_nll, retention
from npti_lens.inputs.prompts import build
from tests.helpers import QUESTIONS
from tests.test_induction import two_sets


def test_answer_nll_matches_one_sequence_at_a_time(tiny_models):
    model = tiny_models["llama"]
    tok = model.tokenizer
    pairs = [(QUESTIONS[i], QUESTIONS[-1 - i]) for i in range(4)]
    total, count = answer_nll(model, pairs, batch_size=3)
    want, n = 0.0, 0
    for q, a in pairs:
        p = build(tok, q).token_ids
        ans = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logits = model.original_model(input_ids=torch.tensor([p + ans])).logits[0].float()
        logp = torch.log_softmax(logits[len(p) - 1 : -1], -1).gather(-1, torch.tensor(ans)[:, None])
        want -= float(logp.sum())
        n += len(ans)
    assert count == n
    assert math.isclose(total, want, rel_tol=1e-5)


def test_retention_reports_the_cost_of_an_induction(tiny_models):
    model = tiny_models["llama"]
    tgt, opp = two_sets(model)
    pairs = [(QUESTIONS[i], QUESTIONS[-1 - i]) for i in range(4)]
    r = retention(model, tgt, opp, pairs, gammas=[0.5, 4.0]).rows
    assert [x["gamma"] for x in r] == [None, 0.5, 4.0]
    assert r[0]["delta_nll_per_token"] == 0.0
    assert r[2]["delta_nll_per_token"] != 0.0
    assert abs(r[2]["delta_nll_per_token"]) > abs(r[1]["delta_nll_per_token"])


def test_capability_cli(tiny_dirs, tmp_path, capsys):
    import json

    from npti_lens.cli import main
    from npti_lens.model.load import load_model

    model = load_model(str(tiny_dirs["llama"]))
    for s in two_sets(model):
        s.save(tmp_path / "n" / s.name)
    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        "".join(json.dumps({"question": q, "answer": QUESTIONS[0]}) + "\n" for q in QUESTIONS[:3])
    )
    args = [
        "analyze",
        "capability",
        "--model",
        str(tiny_dirs["llama"]),
        "--neurons",
        str(tmp_path / "n"),
        "--trait",
        "Extraversion",
        "--pole",
        "high",
        "--texts",
        str(texts),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--gammas", "1,2"]) == 0
    lines = (tmp_path / "o" / "capability.csv").read_text().splitlines()
    assert lines[0].startswith("trait,pole,gamma,perplexity") and len(lines) == 4
    assert main([*args, "--gammas", "1,x"]) == 2
    assert "--gammas" in capsys.readouterr().err


def test_choice_accuracy_against_a_plain_forward_and_under_induction(tiny_models, tiny_dirs, tmp_path):
    import json

    from npti_lens.cli import main
    from npti_lens.evaluation.capability import ChoiceItem, choice_accuracy, load_choice_items, pair_nlls
    from npti_lens.method.induction import InduceConfig, induce
    from tests.helpers import hf_reference

    model = tiny_models["llama"]
    tok = model.tokenizer
    hf = hf_reference(tiny_dirs["llama"])
    options = ("calm", "party with friends", "new art", "work")

    def plain_ll(q, c):
        p = build(tok, q).token_ids
        ans = tok(" " + c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = hf(torch.tensor([p + ans])).logits[0].float()
        return float(
            torch.log_softmax(logits[len(p) - 1 : -1], -1).gather(-1, torch.tensor(ans)[:, None]).sum()
        )

    items, want = [], []
    for i, q in enumerate(QUESTIONS[:5]):
        lls = [plain_ll(q, c) for c in options]
        best = max(range(4), key=lls.__getitem__)
        answer = best if i % 2 == 0 else (best + 1) % 4  # 3 of 5 right by plain log-likelihood
        items.append(ChoiceItem(q, options, answer))
        want.append(lls)
    got = pair_nlls(model, [(it.question, " " + c) for it in items for c in it.choices], 3, eos=False)
    assert [-n for n, _ in got] == pytest.approx([v for lls in want for v in lls], abs=1e-4)
    assert choice_accuracy(model, items)["accuracy"] == pytest.approx(3 / 5)
    tgt, opp = two_sets(model)
    base = pair_nlls(model, [(QUESTIONS[0], " calm")], eos=False, edit_last_prompt=True)
    with induce(model, [(tgt, opp)], InduceConfig(gamma=4.0)):
        moved = pair_nlls(model, [(QUESTIONS[0], " calm")], eos=False, edit_last_prompt=True)
        kept = pair_nlls(model, [(QUESTIONS[0], " calm")], eos=False)  # the one-token answer's own position
    assert moved[0][0] != pytest.approx(base[0][0]) and kept[0][0] == pytest.approx(base[0][0], abs=1e-5)

    path = tmp_path / "mc.jsonl"
    path.write_text(
        "".join(
            json.dumps({"question": it.question, "choices": list(it.choices), "answer": it.answer}) + "\n"
            for it in items
        )
    )
    assert load_choice_items(str(path)) == items
    for s in (tgt, opp):
        s.save(tmp_path / "n" / s.name)
    args = ["analyze", "capability", "--model", str(tiny_dirs["llama"]), "--neurons", str(tmp_path / "n"),
            "--trait", "Extraversion", "--pole", "high", "--choices", str(path), "--gammas", "4", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 0
    lines = (tmp_path / "o" / "capability.csv").read_text().splitlines()
    assert lines[0] == "trait,pole,gamma,accuracy,accuracy_norm,n_items,delta_accuracy" and len(lines) == 3
    assert lines[1].startswith("Extraversion,high,,0.6,")
    path.write_text('{"question": "q", "choices": ["a"], "answer": 0}\n')
    assert main(args) == 2
