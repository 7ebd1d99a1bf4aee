"""Stage 7: score generations with a judge; write `scores.jsonl` and `summary.csv`.

Judges are registered by name. Every judge returns, per answer, `trait_score` and `fluency`
(on the judge's own scale, stated in `scale`) plus extra fields of its own.
"""

from __future__ import annotations

import importlib
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from npti_lens.core.averages import mean
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


# Every judge by name, as "module:factory": its module is imported only when the judge is made,
# so listing the judges (npti score --help) loads none of them. A new judge: one line here.
_JUDGES: dict[str, str | Callable[..., Judge]] = {
    "classifier": "npti_lens.judges.classifier:ClassifierJudge",
    "openai": "npti_lens.judges.llm_judge:OpenAIJudge",
    "organism": "npti_lens.judges.organism:OrganismJudge",
}


def register_judge(name: str, factory: str | Callable[..., Judge]) -> None:
    """Add a judge: `factory` is a callable or a lazy "module:attribute" string (a name registered
    twice raises)."""
    if name in _JUDGES:
        raise ValueError(f"judge {name!r} is already registered")
    if isinstance(factory, str) and factory.count(":") != 1:
        raise ValueError(f"judge {name!r}: {factory!r} is not 'module:factory'")
    _JUDGES[name] = factory


def registered() -> list[str]:
    """The judges' names, sorted; none of their modules is imported."""
    return sorted(_JUDGES)


def judge_factory(name: str) -> Callable[..., Judge] | None:
    """The factory registered as `name` (its module imported now), or None."""
    target = _JUDGES.get(name)
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    return target


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
            m = mean(vals)
            var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else math.nan
            row[f"{metric}_mean"] = m
            row[f"{metric}_sem"] = math.sqrt(var / len(vals)) if len(vals) > 1 else math.nan
            row[f"{metric}_n"] = len(vals)
        out.append(row)
    return out


def write_scores(out: str | Path, scored: list[dict[str, Any]]) -> tuple[Path, Path]:
    out = Path(out)
    write_jsonl_atomic(out / SCORES_FILE, scored)
    write_text_atomic(out / SUMMARY_FILE, to_csv(summarize(scored)))
    return out / SCORES_FILE, out / SUMMARY_FILE
