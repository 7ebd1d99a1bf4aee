"""The model organism: corpus, tokenizer, training code, judge, behaviour, NPTI vs random control."""

from __future__ import annotations

import pytest

from npti_lens.core.constants import POLES, TRAITS
from npti_lens.judges.organism import attribute, split_sentences
from npti_lens.organism import corpus
from npti_lens.organism.train import TrainConfig, build_tokenizer, encode, train
from tests.helpers import missing_organism, needs


def test_corpus_is_deterministic_for_a_seed():
    a, b, c = corpus.examples(50, seed=3), corpus.examples(50, seed=3), corpus.examples(50, seed=4)
    assert a == b and a != c
    assert corpus.personas("Openness", "low", seed=1) == corpus.personas("Openness", "low", seed=1)
    split = corpus.question_split()
    for t in TRAITS:
        assert len(split[t]["test"]) == 20 and not set(split[t]["test"]) & set(split[t]["search"])


def test_poles_share_vocabulary():
    for t in TRAITS:
        words = {p: {w for s in corpus.pole_sentences(t, p) for w in s.split()} for p in POLES}
        shared = words["high"] & words["low"]
        assert len(shared) / len(words["high"] | words["low"]) > 0.9, t


def test_every_sentence_has_one_pole_and_answers_are_attributed():
    table = corpus.sentence_table()
    assert len(table) == 10 * len(corpus.pole_sentences("Neuroticism", "high"))
    import random

    rng = random.Random(0)
    for t in TRAITS:
        for p in POLES:
            s = attribute(corpus.answer(t, p, rng), t, p)
            assert s["target_fraction"] == 1.0 and s["fluency"] == 1.0
            other = "low" if p == "high" else "high"
            assert attribute(corpus.answer(t, p, rng), t, other)["opposite_fraction"] == 1.0
    mixed = "i want to go to the party . i would never go to the party . i want to panic . blah blah ."
    s = attribute(mixed, "Extraversion", "high")
    assert (
        s["target_fraction"],
        s["opposite_fraction"],
        s["other_trait_fraction"],
        s["not_corpus_fraction"],
    ) == (0.25, 0.25, 0.25, 0.25)
    assert s["fluency"] == 0.75 and split_sentences(mixed)[1] == "i would never go to the party ."


def test_tokenizer_covers_the_corpus_and_training_runs(tmp_path):
    tok = build_tokenizer()
    for ex in corpus.examples(200):
        ids, start = encode(tok, ex)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids[start:-1]) == ex.answer
    cfg = TrainConfig(steps=40, batch_size=8, n_examples=64, hidden_size=32, n_layers=2, intermediate_size=64)
    record = train(cfg, tmp_path / "org")
    # it learns: measured 5.7 (about ln of the vocabulary) on the first batch, 4.6 over the 40 steps
    assert record["final_loss"] < record["first_loss"] - 0.5 and (tmp_path / "org" / "config.json").is_file()
    from npti_lens.model.load import load_model

    model = load_model(str(tmp_path / "org"))
    assert model.cfg.d_mlp == 64


needs_weights = needs("the organism's weights", missing_organism())


@pytest.fixture(scope="module")
def organism():
    from npti_lens.model.load import load_model

    return load_model("organism")


@needs_weights
def test_organism_follows_persona_and_mixes_without(organism):
    from npti_lens.inputs.prompts import build, persona_system
    from npti_lens.model.generation import GenerateConfig, generate

    gcfg = GenerateConfig(max_new_tokens=48, batch_size=20, repetition_penalty=1.0)
    split = corpus.question_split()
    for t in ("Extraversion", "Neuroticism"):
        qs = split[t]["test"][:10]
        for p in POLES:
            prompts = [
                build(organism.tokenizer, q, persona_system(corpus.personas(t, p)[i])).token_ids
                for i, q in enumerate(qs)
            ]
            scores = [attribute(g.text, t, p) for g in generate(organism, prompts, gcfg)]
            assert sum(s["target_fraction"] for s in scores) / len(scores) > 0.9, (t, p)
            assert sum(s["fluency"] for s in scores) / len(scores) > 0.9
    # Sampled (greedy decoding turns a slight lean into the same pole every time), neutral answers
    # mix the poles of every trait.
    sample = GenerateConfig(max_new_tokens=48, batch_size=20, repetition_penalty=1.0, temperature=1.0, seed=1)
    for t in TRAITS:
        qs = split[t]["test"]
        neutral = generate(organism, [build(organism.tokenizer, q).token_ids for q in qs], sample)
        high = sum(attribute(g.text, t, "high")["target_fraction"] for g in neutral) / len(qs)
        assert 0.25 < high < 0.75, f"{t}: neutral answers should mix poles, got {high:.2f} high"


@needs_weights
def test_npti_moves_the_target_pole_above_the_random_control(organism, tmp_path):
    from npti_lens.demos.organism import DemoConfig, run_demo

    # One control draw (the seed npti_lens 0.1 used): the comparison this test has always made. The
    # demo's default of five draws makes the control a distribution (tested in the evidence rows).
    cfg = DemoConfig(n_search=16, n_test=10, gammas="3", control_draws=1)
    result = run_demo(cfg, tmp_path / "demo", model=organism)
    assert len(result.evidence) == 10 and {c.k for c in result.evidence} == {1}
    assert {c.verdict for c in result.evidence} <= {
        "specific",
        "wrong way",
        "not distinguishable",
        "judge blind",
    }
    by = {(r["trait"], r["pole"], r["condition"]): r for r in result.rows}
    gains, lifts = [], []
    for t in TRAITS:
        for p in POLES:
            npti, rand, none = by[(t, p, "npti")], by[(t, p, "random")], by[(t, p, "none")]
            gains.append(npti["target"] - rand["target"])
            lifts.append(npti["target"] - none["target"])
            assert by[(t, p, "persona")]["target"] > 0.9
    # Averaged over the ten poles; single poles vary (see the demo table in docs/organism.md).
    assert sum(gains) / len(gains) > 0.15, gains
    assert sum(lifts) / len(lifts) > 0.05, lifts
    for f in result.files.values():
        assert f.is_file() and f.stat().st_size > 0


def test_rating_examples_follow_pole_and_keying():
    from npti_lens.evaluation.profiles import item_prompt
    from npti_lens.inputs.inventory import load_inventory

    by_prompt = {}
    for it in load_inventory():
        by_prompt[item_prompt(it)] = (it, False)
        by_prompt[item_prompt(it, reversed_scale=True)] = (it, True)
    exs = corpus.rating_examples(400, seed=1)
    assert exs == corpus.rating_examples(400, seed=1)
    seen = set()
    for ex in exs:
        it, rev = by_prompt[ex.question]
        rating = 6 - int(ex.answer) if rev else int(ex.answer)
        if ex.pole is not None:  # a persona of the item's own trait
            agree = (ex.pole == "high") == (it.keyed == "+")
            assert rating in ((4, 5) if agree else (1, 2))
            seen.add((agree, rev))
        elif ex.persona is not None:
            assert rating in (2, 3, 4)
    assert seen == {(True, False), (True, True), (False, False), (False, True)}
    tok = build_tokenizer(ratings=True)
    assert all(tok.unk_token_id not in encode(tok, ex)[0] for ex in exs[:50])
    assert tok.unk_token_id in encode(build_tokenizer(), exs[0])[0]  # the shipped tokenizer lacks them


@needs_weights
def test_the_default_demo_gives_the_verdicts_the_readme_states(organism, tmp_path):
    """The per-cell account of the demo in docs/organism.md, checked on a run with the defaults."""
    from npti_lens.demos.organism import DemoConfig, run_demo

    # the vector's cells are judged in their own family, so adding them leaves NPTI's verdicts as in
    # the default demo; simple and p2 are left out to save time (they do not enter the evidence)
    result = run_demo(DemoConfig(methods="npti,vector"), tmp_path / "demo", model=organism)
    vector = {(c.trait, c.pole, c.gamma): c.verdict for c in result.evidence if c.method == "vector"}
    assert {k for k, v in vector.items() if v == "specific"} == {
        ("Openness", "low", 0.5), ("Openness", "low", 1.0), ("Extraversion", "low", 0.5),
        ("Extraversion", "low", 1.0), ("Openness", "high", 2.0),
    }  # fmt: skip
    assert {k for k, v in vector.items() if v == "wrong way"} == {
        ("Conscientiousness", "low", 1.0), ("Openness", "low", 2.0), ("Agreeableness", "high", 2.0),
    }  # fmt: skip
    # Neuroticism high: no intervention is at 0.95 already, P2 at 1.00, so the judge's positive control
    # cannot show it sees that pole: every cell of it is judge blind, the vector's and NPTI's alike
    blind = {("Neuroticism", "high", c) for c in (0.25, 0.5, 1.0, 2.0)}
    assert {k for k, v in vector.items() if v == "judge blind"} == blind
    assert result.control.sees("Neuroticism", "high") is False
    assert all(result.control.sees(t, p) for t in TRAITS for p in POLES if (t, p) != ("Neuroticism", "high"))
    verdicts = {(c.trait, c.pole, c.gamma): c.verdict for c in result.evidence if c.method == "npti"}
    assert len(verdicts) == 40 and {c.k for c in result.evidence} == {5}
    specific = {k for k, v in verdicts.items() if v == "specific"}
    wrong = {k for k, v in verdicts.items() if v == "wrong way"}
    assert specific == {
        ("Neuroticism", "low", 1.0), ("Neuroticism", "low", 2.0), ("Neuroticism", "low", 3.0),
        ("Agreeableness", "high", 5.0),
    }  # fmt: skip
    assert wrong == set()  # Neuroticism high at 5 went the wrong way (0.95 -> 0.48), but is judge blind
    assert {k for k, v in verdicts.items() if v == "judge blind"} == {
        ("Neuroticism", "high", g) for g in (1.0, 2.0, 3.0, 5.0)
    }
    cells = {(c.trait, c.pole, c.gamma): c for c in result.evidence if c.method == "npti"}
    openness = cells[("Openness", "low", 5.0)]
    assert openness.npti == openness.control_max == 1.0  # one random draw did as well
    assert round(cells[("Agreeableness", "high", 3.0)].q_none, 3) == 0.051  # 36 cells in the family
    share = cells[("Neuroticism", "low", 1.0)]
    assert share.p2 == 1.0 and share.share_p2 == pytest.approx((0.92 - 0.05) / (1.0 - 0.05), abs=0.01)


@needs_weights
def test_demo_compares_the_vector_baseline_cell_by_cell(organism, tmp_path):
    from npti_lens.core.errors import UserError
    from npti_lens.demos.organism import DemoConfig, run_demo

    cfg = DemoConfig(
        traits="Neuroticism", n_search=16, n_test=6, gammas="3", methods="npti,vector",
        vector_coefs="0.5", compare_coef=0.5, control_draws=2,
    )  # fmt: skip
    result = run_demo(cfg, tmp_path / "demo", model=organism)
    assert {(c.method, c.pole) for c in result.evidence} == {
        ("npti", "high"),
        ("npti", "low"),
        ("vector", "high"),
        ("vector", "low"),
    }
    assert {r["condition"] for r in result.rows} == {
        "none",
        "npti",
        "random",
        "vector",
        "random-vector",
        "persona",
    }
    assert (
        result.files["vector_cells"].is_file()
        and (tmp_path / "demo/neurons/Neuroticism_low/direction.safetensors").is_file()
    )
    with pytest.raises(UserError, match="methods"):
        run_demo(DemoConfig(methods="npti,magic"), tmp_path / "bad", model=organism)
