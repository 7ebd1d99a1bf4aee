"""The real-model demo's files: tables, the judge's validity and control, the text side by side
(`samples.md`), the dose-response figures (`dose/`) and the evidence figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from npti_lens.core.constants import POLES, TRAITS, pole_name
from npti_lens.core.files import to_csv, write_json_atomic, write_jsonl_atomic, write_text_atomic
from npti_lens.evaluation import evidence
from npti_lens.evaluation.report import samples_md, write_dose_figures

CONDITION_ORDER = ("none", "simple", "p2", "npti", "random", "vector", "random-vector")


def sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by trait, pole, condition and strength (the sweep makes them level by level)."""

    def key(r: dict[str, Any]) -> tuple:
        return (TRAITS.index(r["trait"]), POLES.index(r["pole"]), CONDITION_ORDER.index(r["condition"]),
                r["strength"] if r["strength"] is not None else -1.0)  # fmt: skip

    return sorted(rows, key=key)


def write_real(d: Any) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write every file of the demo `d` (a `demo_real._Demo` whose stages ran); (files, validity)."""
    from npti_lens.evaluation.curves import evidence_forest

    out = d.out
    files = {
        "csv": out / "demo_results.csv",
        "evidence": out / "demo_evidence.csv",
        "choices": out / "demo_choices.csv",
        "validity": out / "judge_validity.json",
        "control": out / "control.json",
        "generations": out / "demo_generations.jsonl",
        "samples": out / "samples.md",
        "cells": out / "evidence.png",
        "dose": out / "dose",
    }
    d.rows[:] = sorted_rows(d.rows)
    write_text_atomic(files["csv"], to_csv(d.rows))
    write_text_atomic(files["evidence"], to_csv(evidence.to_rows(d.cells)))
    write_text_atomic(files["choices"], to_csv(d.choices))
    validity = {t: {**d.judge.clf.cfg["validity"].get(t, {}), "reader": d.judge.clf.reader,
                    "p2_auroc": d.control.traits[t].auroc, "p2_auroc_low": d.control.traits[t].auroc_low,
                    "p2_auroc_high": d.control.traits[t].auroc_high,
                    "p2_sees": {p: d.control.sees(t, p) for p in POLES}} for t in d.traits}  # fmt: skip
    write_json_atomic(files["validity"], validity)
    write_jsonl_atomic(files["generations"], [{**r, "demo_set": k} for k, rs in d.scored.items() for r in rs])
    chosen = {(c["trait"], c["pole"]): c["chosen"] for c in d.choices if c["method"] == "npti"}
    write_text_atomic(files["samples"], samples_md(_sample_cells(d, chosen), title="What the model wrote"))
    bands = {}
    for t in d.traits:
        for p in POLES:
            bands[(t, p)] = {"none": _band(d.toward(f"{t}_none", p), d.cfg.seed),
                             "p2": _band(d.toward(f"{pole_name(t, p)}_p2", p), d.cfg.seed)}  # fmt: skip
    write_dose_figures(
        d.sweep, bands, chosen, files["dose"], floor=d.cfg.fluency_floor, ylabel="P(pole), offline judge"
    )
    if any(c.method == "npti" for c in d.cells):
        evidence_forest(evidence.to_rows([c for c in d.cells if c.method == "npti"]), files["cells"],
                        ylabel="P(pole), offline judge")  # fmt: skip
    else:
        del files["cells"]
    return files, validity


def _band(scores: list[float], seed: int) -> tuple[float, float, float]:
    """Mean with its 95% bootstrap interval."""
    lo, hi = evidence.mean_ci(scores, seed=seed)
    return float(np.mean(scores)), lo, hi


def _sample_cells(d: Any, chosen: dict[tuple[str, str], float | None]) -> list[dict[str, Any]]:
    verdicts = {(c.trait, c.pole): c.verdict for c in d.cells if c.method == "npti"}
    cells = []
    for t in d.traits:
        for p in POLES:
            g = chosen.get((t, p))
            keys = {"none": f"{t}_none", "P2": f"{pole_name(t, p)}_p2"}
            if g is not None:
                keys[f"NPTI gamma {g:g}"] = f"{pole_name(t, p)}_npti_{g:g}"
            answers = {label: [{**r, "score": s} for r, s in zip(d.scored[k], d.toward(k, p), strict=True)]
                       for label, k in keys.items()}  # fmt: skip
            verdict = verdicts.get((t, p), "no fluent strength" if g is None else "")
            cells.append({"trait": t, "pole": p, "verdict": verdict, "answers": answers})
    return cells
