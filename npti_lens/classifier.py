"""Stage 7, an offline trait judge: a text classifier of high vs low trained on the model's own
persona answers (`npti judge train RUN`, `npti score --judge classifier`).

Per trait: word (1-2)-gram and character (2-4)-gram TF-IDF (sublinear tf, l2 rows) side by side,
then logistic regression (scikit-learn). Validity is measured by cross-validation grouped by
question (no question on both sides of a split): held-out accuracy, AUROC, Brier score and expected
calibration error, written to the classifier's `cfg.json`.

The fitted parameters are stored as JSON (vocabularies, settings) and safetensors (idf, weights),
never pickled, and the features are rebuilt from them by a plain computation that the tests hold
equal to scikit-learn's own transform.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npti_lens.constants import ANSWERS_DIR, CFG_FILE, POLES, RUN_CFG_FILE, TRAITS, VERSION, pole_name
from npti_lens.errors import UserError
from npti_lens.io import atomic_path, fingerprint, read_json, write_json_atomic
from npti_lens.score import register_judge

log = logging.getLogger(__name__)

FORMAT = 1
KIND = "npti_lens.classifier"
WEIGHTS_FILE = "classifier.safetensors"
VOCAB_FILE = "vocabulary.json"
ANALYZERS = {"word": ("word", (1, 2)), "char": ("char_wb", (2, 4))}


@dataclass
class ClassifierConfig:
    folds: int = field(default=5, metadata={"help": "cross-validation folds, grouped by question"})
    c: float = field(default=4.0, metadata={"help": "inverse regularisation strength of the regression"})
    min_df: int = field(default=2, metadata={"help": "keep n-grams seen in at least this many answers"})
    seed: int = field(default=0, metadata={"help": "seed of the regression's solver"})


# ----- features: scikit-learn to fit, a plain rebuild to apply --------------------------------


def _vectorizer(kind: str, min_df: int = 1, vocabulary: dict[str, int] | None = None) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyzer, ngrams = ANALYZERS[kind]
    return TfidfVectorizer(
        analyzer=analyzer,
        ngram_range=ngrams,
        lowercase=True,
        sublinear_tf=True,
        min_df=min_df if vocabulary is None else 1,
        vocabulary=vocabulary,
    )


def _features(texts: list[str], vocab: dict[str, dict[str, int]], idf: dict[str, np.ndarray]) -> Any:
    """TF-IDF rows rebuilt from stored vocabularies and idf: counts -> 1 + log -> * idf -> l2."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    blocks = []
    for kind in ANALYZERS:
        analyzer, ngrams = ANALYZERS[kind]
        counts = (
            CountVectorizer(analyzer=analyzer, ngram_range=ngrams, lowercase=True, vocabulary=vocab[kind])
            .transform(texts)
            .astype(np.float64)
            .tocsr()
        )
        counts.data = 1.0 + np.log(counts.data)
        x = counts.multiply(idf[kind][None, :]).tocsr()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        blocks.append(sparse.diags(1.0 / norms) @ x)
    return sparse.hstack(blocks).tocsr()


@dataclass
class TraitModel:
    """One trait's fitted classifier: P(high) of a text."""

    trait: str
    vocab: dict[str, dict[str, int]]
    idf: dict[str, np.ndarray]
    coef: np.ndarray
    intercept: float

    def p_high(self, texts: list[str]) -> np.ndarray:
        z = _features(texts, self.vocab, self.idf) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64).ravel()))


def fit_trait(texts: list[str], labels: np.ndarray, trait: str, cfg: ClassifierConfig) -> TraitModel:
    """Fit the vectorisers and the regression on all of `texts` (labels: 1 = high)."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    vecs = {k: _vectorizer(k, cfg.min_df) for k in ANALYZERS}
    x = sparse.hstack([vecs[k].fit_transform(texts) for k in ANALYZERS]).tocsr()
    reg = LogisticRegression(C=cfg.c, max_iter=2000, random_state=cfg.seed).fit(x, labels)
    return TraitModel(
        trait=trait,
        vocab={k: {t: int(i) for t, i in vecs[k].vocabulary_.items()} for k in ANALYZERS},
        idf={k: np.asarray(vecs[k].idf_, dtype=np.float64) for k in ANALYZERS},
        coef=np.asarray(reg.coef_[0], dtype=np.float64),
        intercept=float(reg.intercept_[0]),
    )


# ----- validity: cross-validation grouped by question -------------------------------------------


def grouped_folds(groups: list[str], n_folds: int) -> list[np.ndarray]:
    """Fold index per row such that every group lies in one fold (GroupKFold); the test folds."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(set(groups))
    k = min(n_folds, n_groups)
    if k < 2:
        raise UserError(f"grouped cross-validation needs 2 or more questions, the run has {n_groups}")
    idx = np.arange(len(groups))
    return [test for _, test in GroupKFold(n_splits=k).split(idx, groups=groups)]


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, float]:
    """(Brier score, expected calibration error over `bins` equal-width bins of P(high))."""
    brier = float(np.mean((p - y) ** 2))
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(p[m].mean() - y[m].mean())
    return brier, float(ece)


def auroc(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else math.nan


def validate(
    texts: list[str], labels: np.ndarray, groups: list[str], cfg: ClassifierConfig
) -> dict[str, Any]:
    """Out-of-fold P(high) of every answer from models that never saw its question, and its figures."""
    p = np.zeros(len(texts))
    folds = grouped_folds(groups, cfg.folds)
    for test in folds:
        train = np.setdiff1d(np.arange(len(texts)), test)
        if len(set(labels[train].tolist())) < 2:
            raise UserError("a cross-validation fold has answers of one pole only; search more questions")
        m = fit_trait([texts[i] for i in train], labels[train], "cv", cfg)
        p[test] = m.p_high([texts[i] for i in test])
    brier, ece = calibration(p, labels)
    return {
        "n_answers": len(texts),
        "n_questions": len(set(groups)),
        "folds": len(folds),
        "accuracy": float(np.mean((p >= 0.5) == (labels == 1))),
        "auroc": auroc(p, labels),
        "brier": brier,
        "ece": ece,
    }


# ----- the classifier folder ---------------------------------------------------------------------


@dataclass
class Classifier:
    """Per-trait models with the run they were trained on and their held-out figures."""

    models: dict[str, TraitModel]
    cfg: dict[str, Any]

    @property
    def traits(self) -> list[str]:
        return list(self.models)

    def p_high(self, trait: str, texts: list[str]) -> np.ndarray:
        if trait not in self.models:
            raise UserError(
                f"--classifier: not trained on {trait} (it knows {', '.join(self.models)}); "
                "train it on a run with that trait"
            )
        return self.models[trait].p_high(texts)

    def save(self, out: str | Path) -> Path:
        from safetensors.numpy import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {}
        vocab: dict[str, dict[str, dict[str, int]]] = {}
        for t, m in self.models.items():
            vocab[t] = m.vocab
            for k in ANALYZERS:
                tensors[f"{t}.idf.{k}"] = m.idf[k]
            tensors[f"{t}.coef"] = m.coef
            tensors[f"{t}.intercept"] = np.array([m.intercept])
        with atomic_path(out / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(out / VOCAB_FILE) as tmp:
            tmp.write_text(json.dumps(vocab, sort_keys=True), encoding="utf-8")
        write_json_atomic(out / CFG_FILE, self.cfg)
        return out

    @classmethod
    def load(cls, folder: str | Path) -> Classifier:
        from safetensors.numpy import load_file

        folder = Path(folder)
        where = f"--classifier: {folder}"
        if not (folder / CFG_FILE).is_file():
            raise UserError(
                f"{where} holds no classifier ({CFG_FILE} missing); make one with npti judge train"
            )
        cfg = read_json(folder / CFG_FILE)
        if not isinstance(cfg, dict) or cfg.get("kind") != KIND:
            raise UserError(f"{where}/{CFG_FILE} is not a classifier's; make one with npti judge train")
        if cfg.get("format") != FORMAT:
            raise UserError(
                f"{where} is classifier format {cfg.get('format')!r}, this npti_lens reads {FORMAT}; train it again"
            )
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
            vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
            if fingerprint(vocab) != cfg.get("vocabulary_fingerprint"):
                raise ValueError("vocabulary does not match cfg.json")
            models = {}
            for t in cfg["traits"]:
                m = TraitModel(
                    trait=t,
                    vocab=vocab[t],
                    idf={k: tensors[f"{t}.idf.{k}"] for k in ANALYZERS},
                    coef=tensors[f"{t}.coef"],
                    intercept=float(tensors[f"{t}.intercept"][0]),
                )
                width = sum(len(m.vocab[k]) for k in ANALYZERS)
                if m.coef.shape != (width,) or any(m.idf[k].shape != (len(m.vocab[k]),) for k in ANALYZERS):
                    raise ValueError(f"{t}: weights do not fit its vocabulary")
                models[t] = m
        except UserError:
            raise
        except Exception as e:  # safetensors, JSON and missing keys all mean a damaged folder
            raise UserError(f"{where} is damaged ({type(e).__name__}: {e}); train it again") from None
        return cls(models, cfg)


def run_rows(run: str | Path, trait: str) -> list[dict[str, Any]]:
    """The persona answers of both poles of `trait` in a search run (rows with text only)."""
    from npti_lens.io import read_jsonl

    rows = []
    for pole in POLES:
        path = Path(run) / ANSWERS_DIR / f"{pole_name(trait, pole)}.jsonl"
        if not path.is_file():
            raise UserError(f"{path}: no answers of {pole_name(trait, pole)}; search that trait first")
        got = [r for r in read_jsonl(path, what="search answers") if str(r.get("answer", "")).strip()]
        if not got:
            raise UserError(f"{path}: no answer text to train on")
        rows += [{**r, "pole": pole} for r in got]
    return rows


def train(
    run: str | Path, out: str | Path, traits: list[str], cfg: ClassifierConfig | None = None
) -> Classifier:
    """Fit and validate a classifier per trait on a search run's persona answers; save it to `out`."""
    cfg = cfg or ClassifierConfig()
    run = Path(run)
    if not (run / RUN_CFG_FILE).is_file():
        raise UserError(f"RUN: {run} is not a search run ({RUN_CFG_FILE} missing); run npti search first")
    meta = read_json(run / RUN_CFG_FILE)
    data = {t: run_rows(run, t) for t in traits}  # every trait checked before any fitting
    models, figures = {}, {}
    for t, rows in data.items():
        texts = [str(r["answer"]) for r in rows]
        labels = np.array([1 if r["pole"] == "high" else 0 for r in rows])
        groups = [str(r.get("question", i)) for i, r in enumerate(rows)]
        figures[t] = validate(texts, labels, groups, cfg)
        models[t] = fit_trait(texts, labels, t, cfg)
        log.info("%s: held-out accuracy %.3f, AUROC %.3f", t, figures[t]["accuracy"], figures[t]["auroc"])
    vocab = {t: m.vocab for t, m in models.items()}
    out_cfg = {
        "kind": KIND,
        "format": FORMAT,
        "npti_lens": VERSION,
        "run": str(run),
        "model": meta.get("model"),
        "protocol": meta.get("protocol"),
        "protocol_hash": meta.get("protocol_hash"),
        "run_fingerprint": fingerprint(
            {t: [(r["question"], r["answer"], r["pole"]) for r in data[t]] for t in traits}
        ),
        "features": {k: {"analyzer": a, "ngram_range": list(n)} for k, (a, n) in ANALYZERS.items()},
        "config": cfg.__dict__,
        "traits": list(models),
        "validity": figures,
        "vocabulary_fingerprint": fingerprint(vocab),
    }
    clf = Classifier(models, out_cfg)
    clf.save(out)
    return clf


class ClassifierJudge:
    """P(row's pole) from the classifier as `trait_score` (0-1), with the offline fluency beside it."""

    name = "classifier"
    scale = "probability of the row's pole (0-1); fluency 0-1 (npti_lens.fluency)"

    def __init__(
        self,
        classifier: str | Path | Classifier | None = None,
        trait: str | None = None,
        pole: str | None = None,
        model: Any | None = None,
    ) -> None:
        if classifier is None:
            raise UserError("--classifier: name the folder of a classifier (npti judge train RUN --out DIR)")
        self.clf = classifier if isinstance(classifier, Classifier) else Classifier.load(classifier)
        self.trait, self.pole, self.model = trait, pole, model
        self.warnings: list[str] = []

    def check(self, rows: list[dict[str, Any]]) -> None:
        """Refuse rows of an untrained trait; warn (once each) for another model or protocol."""
        for r in rows:
            if (self.trait or r.get("trait")) not in TRAITS:
                raise UserError(f"line {r.get('_line', '?')}: no trait to judge against; pass --trait")
        for trait in sorted({str(self.trait or r.get("trait")) for r in rows}):
            self.clf.p_high(trait, [])  # raises for a trait it was not trained on (once per trait)
        for key in ("model", "protocol"):
            theirs = sorted({str(r[key]) for r in rows if r.get(key) is not None})
            mine = self.clf.cfg.get(key)
            other = [v for v in theirs if mine is not None and v.lower() != str(mine).lower()]
            if other:
                msg = (
                    f"answers come from {key} {', '.join(other)}, the classifier was trained on {mine}: "
                    "its verdicts may not transfer"
                )
                self.warnings.append(msg)
                log.warning(msg)

    def score(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from npti_lens.fluency import fluency_rows

        self.check(rows)
        out: list[dict[str, Any]] = [{} for _ in rows]
        by_trait: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_trait.setdefault(str(self.trait or r.get("trait")), []).append(i)
        for trait, idx in by_trait.items():
            p = self.clf.p_high(trait, [str(rows[i].get("answer", "")) for i in idx])
            for i, ph in zip(idx, p, strict=True):
                pole = self.pole or rows[i].get("pole")
                out[i] = {
                    "judged_trait": trait,
                    "p_high": float(ph),
                    "trait_score": float(1 - ph if pole == "low" else ph),
                }
        for o, f in zip(out, fluency_rows(rows, self.model), strict=True):
            o.update(f)
        return out


@register_judge("classifier")
def _make(**kwargs: Any) -> ClassifierJudge:
    return ClassifierJudge(**kwargs)
