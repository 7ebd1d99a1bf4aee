"""The offline trait classifier: a corpus of two vocabularies where the answer is known, grouped
cross-validation, the stored parameters against scikit-learn's own transform, bad folders."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from npti_lens.core.errors import UserError
from npti_lens.judges.classifier import (
    ANALYZERS,
    Classifier,
    ClassifierConfig,
    ClassifierJudge,
    _vectorizer,
    grouped_folds,
    train,
)
from npti_lens.judges.fitting import TFIDF_C

HIGH = ["party", "friends", "crowd", "dance", "loud", "talk", "laugh", "join", "people", "meet"]
LOW = ["alone", "quiet", "book", "home", "read", "rest", "calm", "silence", "garden", "tea"]
FILLER = ["i", "would", "the", "and", "then", "a", "to", "on", "my", "day", "after", "it"]


def _answer(rng: random.Random, vocab: list[str]) -> str:
    return " ".join(rng.choice(vocab if rng.random() < 0.4 else FILLER) for _ in range(18))


def make_run(root, traits=("Extraversion", "Openness"), n_questions=12, per_question=2, model="tiny"):
    rng = random.Random(0)
    (root / "answers").mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"model": model, "protocol": "npti", "protocol_hash": "abc"}))
    for t in traits:
        for pole, vocab in (("high", HIGH), ("low", LOW)):
            rows = [
                {"question": f"{t} question {q}?", "answer": _answer(rng, vocab), "trait": t, "pole": pole}
                for q in range(n_questions)
                for _ in range(per_question)
            ]
            (root / "answers" / f"{t}_{pole}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_known_corpus_is_learned_and_held_out_by_question(tmp_path):
    run = make_run(tmp_path / "run")
    clf = train(run, tmp_path / "clf", ["Extraversion", "Openness"], ClassifierConfig(folds=4))
    for t in ("Extraversion", "Openness"):
        v = clf.cfg["validity"][t]
        assert v["n_questions"] == 12 and v["folds"] == 4 and v["n_answers"] == 48
        assert v["accuracy"] >= 0.9 and v["auroc"] >= 0.95
        assert 0 <= v["brier"] < 0.2 and 0 <= v["ece"] < 0.5
    p = clf.p_high("Extraversion", ["party with friends and loud dance", "a quiet book at home alone"])
    assert p[0] > 0.5 > p[1]


def test_grouped_folds_never_share_a_question():
    groups = [f"q{i % 7}" for i in range(40)]
    folds = grouped_folds(groups, 5)
    seen = [{groups[i] for i in f} for f in folds]
    for a in range(len(seen)):
        for b in range(a + 1, len(seen)):
            assert not seen[a] & seen[b]
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))
    with pytest.raises(UserError, match="2 or more questions"):
        grouped_folds(["q"] * 5, 5)


def test_stored_parameters_equal_sklearn_and_round_trip(tmp_path):
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    run = make_run(tmp_path / "run", traits=("Extraversion",))
    clf = train(run, tmp_path / "clf", ["Extraversion"])
    rows = [json.loads(x) for pole in ("high", "low")
            for x in (run / "answers" / f"Extraversion_{pole}.jsonl").read_text().splitlines()]  # fmt: skip
    texts = [r["answer"] for r in rows]
    labels = np.array([r["pole"] == "high" for r in rows], dtype=int)
    cfg = ClassifierConfig()
    vecs = {k: _vectorizer(k, cfg.min_df) for k in ANALYZERS}
    x = sparse.hstack([vecs[k].fit_transform(texts) for k in ANALYZERS]).tocsr()
    reg = LogisticRegression(C=TFIDF_C, max_iter=2000, random_state=cfg.seed).fit(x, labels)
    probe = texts[:5] + ["people i never saw", "tea in the garden", ""]
    xp = sparse.hstack([vecs[k].transform(probe) for k in ANALYZERS]).tocsr()
    want = reg.predict_proba(xp)[:, 1]
    np.testing.assert_allclose(clf.p_high("Extraversion", probe), want, rtol=1e-9, atol=1e-12)
    loaded = Classifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(loaded.p_high("Extraversion", probe), clf.p_high("Extraversion", probe))


def test_judge_orients_refuses_and_warns(tmp_path):
    run = make_run(tmp_path / "run", traits=("Extraversion",))
    train(run, tmp_path / "clf", ["Extraversion"])
    judge = ClassifierJudge(tmp_path / "clf")
    text = "party friends dance loud people meet laugh"
    high, low = judge.score(
        [
            {"answer": text, "question": "q", "trait": "Extraversion", "pole": p, "model": "tiny"}
            for p in ("high", "low")
        ]  # fmt: skip
    )
    assert high["trait_score"] == pytest.approx(1 - low["trait_score"]) and high["trait_score"] > 0.5
    assert {"fluency", "degenerate", "rep3"} <= set(high) and not judge.warnings
    with pytest.raises(UserError, match="not trained on Openness"):
        judge.score([{"answer": text, "trait": "Openness", "pole": "high"}])
    judge.score([{"answer": text, "trait": "Extraversion", "pole": "high", "model": "other-model"}])
    assert any("other-model" in w for w in judge.warnings)


def test_bad_runs_and_folders(tmp_path):
    run = make_run(tmp_path / "run", traits=("Extraversion",))
    with pytest.raises(UserError, match="Openness_high"):
        train(run, tmp_path / "x", ["Extraversion", "Openness"])
    assert not (tmp_path / "x").exists()  # refused before anything was written
    with pytest.raises(UserError, match="not a search run"):
        train(tmp_path, tmp_path / "y", ["Extraversion"])
    train(run, tmp_path / "clf", ["Extraversion"])
    cfg = json.loads((tmp_path / "clf" / "cfg.json").read_text())
    (tmp_path / "clf" / "cfg.json").write_text(json.dumps({**cfg, "format": 99}))
    with pytest.raises(UserError, match="format 99"):
        Classifier.load(tmp_path / "clf")
    (tmp_path / "clf" / "cfg.json").write_text(json.dumps(cfg))
    vocab = tmp_path / "clf" / "vocabulary.json"
    vocab.write_text(vocab.read_text().replace('"party"', '"partY"'))
    with pytest.raises(UserError, match="damaged"):
        Classifier.load(tmp_path / "clf")
    (tmp_path / "clf" / "classifier.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="damaged"):
        Classifier.load(tmp_path / "clf")
    with pytest.raises(UserError, match="no classifier"):
        Classifier.load(tmp_path / "nothing")


def test_agrees_with_the_organism_judge_on_held_out_answers(tmp_path):
    """Trained on an organism search run, the classifier's verdict (P(high) >= 0.5) on persona
    answers to held-out questions agrees with the organism's exact judge on most answers."""
    import random as rnd

    from npti_lens.judges.organism import attribute
    from npti_lens.method.protocol import ORGANISM
    from npti_lens.model.generation import GenerateConfig
    from npti_lens.model.load import load_model
    from npti_lens.organism import corpus
    from npti_lens.workflows.answers import Condition, answer
    from npti_lens.workflows.search import SearchConfig, run_search

    model = load_model("organism")
    gcfg = GenerateConfig(max_new_tokens=48, batch_size=32, repetition_penalty=1.0)
    search_dir, _, personas = corpus.write_data(tmp_path / "data", 32, 0)
    run_search(model, search_dir, personas, tmp_path / "run", SearchConfig(traits="Extraversion"), gcfg,
               protocol=ORGANISM)  # fmt: skip
    clf = train(tmp_path / "run", tmp_path / "clf", ["Extraversion"])
    test = corpus.question_split()["Extraversion"]["test"]
    agree, decided = 0, 0
    for pole in ("high", "low"):
        rng = rnd.Random(pole)
        descs = [rng.choice(corpus.personas("Extraversion", pole)) for _ in test]
        rows = answer(
            model, test, Condition.baseline("p2", "Extraversion", pole, descs), gcfg, protocol=ORGANISM
        )
        p = clf.p_high("Extraversion", [r["answer"] for r in rows])
        for r, ph in zip(rows, p, strict=True):
            a = attribute(r["answer"], "Extraversion", "high")
            if a["target_fraction"] == a["opposite_fraction"]:
                continue  # the exact judge has no verdict
            decided += 1
            agree += (ph >= 0.5) == (a["target_fraction"] > a["opposite_fraction"])
    share = agree / decided
    print(f"classifier agrees with the organism judge on {agree} of {decided} answers ({share:.1%})")
    assert decided >= 30 and share >= 0.8
