"""Stage 7, an offline trait judge: a classifier of high vs low over what a reader sees of an answer,
trained on persona answers of the model (`npti judge train RUN`, `npti score --judge classifier`).

Per trait: the reader's features (`npti_lens.judges.readers`: TF-IDF, a sentence encoder, or the subject
model's hidden states), standardised for the dense readers, then logistic regression
(scikit-learn). Validity is measured by cross-validation grouped by question (no question on both
sides of a split): held-out accuracy, AUROC, Brier score and expected calibration error, and the
learning curve (held-out AUROC as the training folds keep 1, 2, 4, ... answers per question and
pole), all written to the classifier's `cfg.json`.

The fitted parameters are stored as JSON (vocabularies, settings) and safetensors (idf, weights,
standardisation), never pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npti_lens.core.constants import ANSWERS_DIR, CFG_FILE, POLES, RUN_CFG_FILE, TRAITS, VERSION, pole_name
from npti_lens.core.errors import UserError
from npti_lens.core.files import atomic_path, fingerprint, read_json, write_json_atomic
from npti_lens.judges.fitting import (  # noqa: F401 - the classifier's names, as before the split
    ClassifierConfig,
    TraitModel,
    auroc,
    calibration,
    curve_sizes,
    fit_trait,
    grouped_folds,
    validate,
)
from npti_lens.judges.readers import ANALYZERS, Tfidf, _vectorizer, make_reader  # noqa: F401 - ANALYZERS, _vectorizer: the old names

log = logging.getLogger(__name__)

FORMAT = 2  # 2: a reader per classifier (format 1, TF-IDF only, still loads)
KIND = "npti_lens.classifier"
WEIGHTS_FILE = "classifier.safetensors"
VOCAB_FILE = "vocabulary.json"
CURVE_FILE = "learning_curve.png"


def question_key(text: str) -> str:
    """A question's identity for overlap checks (case and outer spaces ignored)."""
    return hashlib.sha256(" ".join(str(text).lower().split()).encode("utf-8")).hexdigest()[:16]


# ----- the classifier folder ---------------------------------------------------------------------


@dataclass
class Classifier:
    """Per-trait models with the data they were trained on and their held-out figures."""

    models: dict[str, TraitModel]
    cfg: dict[str, Any]

    @property
    def traits(self) -> list[str]:
        return list(self.models)

    @property
    def reader(self) -> str:
        return str(self.cfg.get("reader", {}).get("kind", "tfidf"))

    def p_high(self, trait: str, texts: list[str]) -> np.ndarray:
        if trait not in self.models:
            raise UserError(
                f"--classifier: not trained on {trait} (it knows {', '.join(self.models)}); "
                f"train it on answers of that trait (npti judge train ... --traits {trait})"
            )
        return self.models[trait].p_high(texts)

    def training_questions(self, trait: str) -> set[str]:
        """The keys (`question_key`) of the questions this trait was trained on (empty: not recorded)."""
        return set(self.cfg.get("questions", {}).get(trait, []))

    def save(self, out: str | Path) -> Path:
        from safetensors.numpy import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {}
        vocab: dict[str, dict[str, dict[str, int]]] = {}
        for t, m in self.models.items():
            if not m.reader.dense:
                vocab[t] = m.reader.vocab
                for k in ANALYZERS:
                    tensors[f"{t}.idf.{k}"] = m.reader.idf[k]
            else:
                tensors[f"{t}.center"], tensors[f"{t}.scale"] = m.center, m.scale
            tensors[f"{t}.coef"] = m.coef
            tensors[f"{t}.intercept"] = np.array([m.intercept])
        with atomic_path(out / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(out / VOCAB_FILE) as tmp:
            tmp.write_text(json.dumps(vocab, sort_keys=True), encoding="utf-8")
        write_json_atomic(out / CFG_FILE, self.cfg)
        return out

    @classmethod
    def load(cls, folder: str | Path, *, model: Any = None, encoder: str | None = None) -> Classifier:
        """A classifier folder; a dense reader is rebuilt from what `cfg.json` names (`encoder`
        overrides the encoder's folder; `model`: the subject model, for the hidden reader)."""
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
        if cfg.get("format") not in (1, FORMAT):
            raise UserError(
                f"{where} is classifier format {cfg.get('format')!r}, this npti_lens reads 1 and {FORMAT}; train it again"
            )
        dense = _dense_reader(cfg, where, model, encoder)
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
            vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
            if fingerprint(vocab) != cfg.get("vocabulary_fingerprint"):
                raise ValueError("vocabulary does not match cfg.json")
            models = {}
            for t in cfg["traits"]:
                if dense is None:
                    reader = Tfidf(vocab=vocab[t], idf={k: tensors[f"{t}.idf.{k}"] for k in ANALYZERS})
                    center = scale = None
                else:
                    reader, center, scale = dense, tensors[f"{t}.center"], tensors[f"{t}.scale"]
                m = TraitModel(
                    t, reader, tensors[f"{t}.coef"], float(tensors[f"{t}.intercept"][0]), center, scale
                )
                if m.coef.shape != (reader.width(),) or (
                    dense is None
                    and any(m.reader.idf[k].shape != (len(m.reader.vocab[k]),) for k in ANALYZERS)
                ):
                    raise ValueError(f"{t}: weights do not fit its reader")
                models[t] = m
        except UserError:
            raise
        except Exception as e:  # safetensors, JSON and missing keys all mean a damaged folder
            raise UserError(f"{where} is damaged ({type(e).__name__}: {e}); train it again") from None
        return cls(models, cfg)


def _dense_reader(cfg: dict[str, Any], where: str, model: Any, encoder: str | None) -> Any:
    """The dense reader a classifier was trained with, checked to be the same one (None: TF-IDF)."""
    spec = cfg.get("reader") or {"kind": "tfidf"}
    kind = spec.get("kind")
    if kind == "tfidf":
        return None
    if kind == "encoder":
        reader = make_reader("encoder", encoder=encoder or spec.get("folder"))
        if reader.record().get("weights_sha256") != spec.get("weights_sha256"):
            raise UserError(
                f"{where} was trained with the encoder {spec.get('name')} (weights sha256 "
                f"{str(spec.get('weights_sha256'))[:16]}), not the one in {reader.folder}; pass that encoder"
            )
        return reader
    if kind == "hidden":
        from npti_lens.model.load import model_id

        if model is not None and model_id(model).lower() != str(spec.get("model")).lower():
            raise UserError(
                f"{where} reads the hidden states of {spec.get('model')}, not of {model_id(model)}"
            )
        return make_reader("hidden", model=model, hidden_layer=spec.get("layer"))
    raise UserError(f"{where}/{CFG_FILE} names an unknown reader {kind!r}; train it again")


def run_rows(run: str | Path, trait: str) -> list[dict[str, Any]]:
    """The persona answers of both poles of `trait` in a search run or judge data folder (rows with
    text only), each with its `sample`: its place among its question's answers of that pole."""
    from npti_lens.core.files import read_jsonl

    rows = []
    for pole in POLES:
        path = Path(run) / ANSWERS_DIR / f"{pole_name(trait, pole)}.jsonl"
        if not path.is_file():
            raise UserError(f"{path}: no answers of {pole_name(trait, pole)}; search that trait first")
        got = [r for r in read_jsonl(path, what="search answers") if str(r.get("answer", "")).strip()]
        if not got:
            raise UserError(f"{path}: no answer text to train on")
        seen: dict[str, int] = {}
        for r in got:
            q = str(r.get("question", ""))
            rows.append({**r, "pole": pole, "sample": seen.get(q, 0)})
            seen[q] = seen.get(q, 0) + 1
    return rows


def train(
    run: str | Path,
    out: str | Path,
    traits: list[str],
    cfg: ClassifierConfig | None = None,
    *,
    model: Any = None,
    progress: bool = False,
) -> Classifier:
    """Fit and validate a classifier per trait on the persona answers of a search run (or of
    `npti judge data`); save it to `out`. `model`: the subject model, for the hidden reader."""
    cfg = cfg or ClassifierConfig()
    run = Path(run)
    if not (run / RUN_CFG_FILE).is_file():
        raise UserError(
            f"RUN: {run} is not a search run or judge data ({RUN_CFG_FILE} missing); run npti search or npti judge data first"
        )
    meta = read_json(run / RUN_CFG_FILE)
    data = {t: run_rows(run, t) for t in traits}  # every trait checked before any fitting
    reader = make_reader(
        cfg.reader, min_df=cfg.min_df, encoder=cfg.encoder, model=model, hidden_layer=cfg.hidden_layer
    )
    shared = reader if reader.dense else None
    models, figures = {}, {}
    from tqdm.auto import tqdm

    for t, rows in tqdm(data.items(), desc="judge train", unit="trait", disable=not progress):
        texts = [str(r["answer"]) for r in rows]
        labels = np.array([1 if r["pole"] == "high" else 0 for r in rows])
        groups = [str(r.get("question", i)) for i, r in enumerate(rows)]
        figures[t] = validate(texts, labels, groups, cfg, shared, [int(r["sample"]) for r in rows])
        models[t] = fit_trait(texts, labels, t, cfg, shared, groups)
        figures[t]["c"] = models[t].c
        log.info("%s: held-out accuracy %.3f, AUROC %.3f", t, figures[t]["accuracy"], figures[t]["auroc"])
    vocab = {t: m.reader.vocab for t, m in models.items() if not m.reader.dense}
    out_cfg = {
        "kind": KIND,
        "format": FORMAT,
        "npti_lens": VERSION,
        "run": str(run),
        "model": meta.get("model"),
        "protocol": meta.get("protocol"),
        "protocol_hash": meta.get("protocol_hash"),
        "stage": meta.get("stage", "search"),
        "run_fingerprint": fingerprint(
            {t: [(r["question"], r["answer"], r["pole"]) for r in data[t]] for t in traits}
        ),
        "reader": reader.record(),
        "config": asdict(cfg),
        "traits": list(models),
        "questions": {t: sorted({question_key(r["question"]) for r in data[t]}) for t in traits},
        "validity": figures,
        "vocabulary_fingerprint": fingerprint(vocab),
    }
    clf = Classifier(models, out_cfg)
    clf.save(out)
    from npti_lens.evaluation.curves import learning_curve

    learning_curve(figures, Path(out) / CURVE_FILE, title=f"{reader.name} judge")
    return clf


class ClassifierJudge:
    """P(row's pole) from the classifier as `trait_score` (0-1), with the offline fluency beside it."""

    name = "classifier"
    scale = "probability of the row's pole (0-1); fluency 0-1 (npti_lens.judges.fluency)"

    def __init__(
        self,
        classifier: str | Path | Classifier | None = None,
        trait: str | None = None,
        pole: str | None = None,
        model: Any | None = None,
    ) -> None:
        if classifier is None:
            raise UserError("--classifier: name the folder of a classifier (npti judge train RUN --out DIR)")
        self.clf = (
            classifier if isinstance(classifier, Classifier) else Classifier.load(classifier, model=model)
        )
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
        from npti_lens.judges.fluency import fluency_rows

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
