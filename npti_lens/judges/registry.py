"""Stage 7: score generations with a judge; write `scores.jsonl` and `summary.csv`.

Judges are registered by name. Every judge returns, per answer, `trait_score` and `fluency`
(on the judge's own scale, stated in `scale`) plus extra fields of its own.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from npti_lens.core.files import to_csv, write_jsonl_atomic, write_text_atomic

SCORES_FILE = "scores.jsonl"
SUMMARY_FILE = "summary.csv"
SCORE_CFG_FILE = "cfg.json"  # which generations file and judge made the scores
GROUP_KEYS = ("trait", "pole", "condition", "gamma", "k", "layers")
METRICS = ("trait_score", "fluency", "trait_score_expected", "fluency_expected")


@runtime_checkable
class Judge(Protocol):
    name: str
    scale: str

    def score(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One dict with at least trait_score and fluency per row, in order."""
        ...


_JUDGES: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str) -> Callable[[Callable[..., Judge]], Callable[..., Judge]]:
    def deco(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        if name in _JUDGES:
            raise ValueError(f"judge {name!r} is already registered")
        _JUDGES[name] = factory
        return factory

    return deco


def registered() -> dict[str, Callable[..., Judge]]:
    """The judges registered so far, by name (`npti_lens.workflows.scoring` imports them all)."""
    return dict(_JUDGES)


def score_rows(rows: list[dict[str, Any]], judge: Judge) -> list[dict[str, Any]]:
    """Rows with the judge's fields added (input fields kept, the judge's win on a clash)."""
    scored = judge.score(rows)
    return [
        {**{k: v for k, v in r.items() if k != "_line"}, **s, "judge": judge.name}
        for r, s in zip(rows, scored, strict=True)
    ]


def summarize(scored: list[dict[str, Any]], keys: tuple[str, ...] = GROUP_KEYS) -> list[dict[str, Any]]:
    """Mean, standard error and count of trait_score and fluency (and their expected-rating
    variants where a judge gives them) per group of `keys`; null scores are left out of a mean."""
    metrics = [
        m for m in METRICS if m in ("trait_score", "fluency") or any(r.get(m) is not None for r in scored)
    ]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in scored:
        groups[tuple(r.get(k) for k in keys)].append(r)
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row["n"] = len(rs)
        for metric in metrics:
            vals = [float(r[metric]) for r in rs if r.get(metric) is not None]
            mean = sum(vals) / len(vals) if vals else math.nan
            var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else math.nan
            row[f"{metric}_mean"] = mean
            row[f"{metric}_sem"] = math.sqrt(var / len(vals)) if len(vals) > 1 else math.nan
            row[f"{metric}_n"] = len(vals)
        out.append(row)
    return out


def write_scores(out: str | Path, scored: list[dict[str, Any]]) -> tuple[Path, Path]:
    out = Path(out)
    write_jsonl_atomic(out / SCORES_FILE, scored)
    write_text_atomic(out / SUMMARY_FILE, to_csv(summarize(scored)))
    return out / SCORES_FILE, out / SUMMARY_FILE
