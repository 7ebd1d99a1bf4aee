"""Inventory files: keyed statements of the Big Five (IPIP-NEO layout), checked row by row.

CSV columns `id,text,domain,facet,facet_name,keyed`; `domain` is a Big Five trait, `facet` its
facet number (1-6 in the IPIP-NEO), `keyed` is `+` (agreeing means more of the domain) or `-`.
The package ships a short inventory written for it (`SHIPPED_INVENTORY`, 60 items: one `+` and one
`-` item per IPIP-NEO facet). The IPIP-NEO-120 or -300 (public domain, ipip.ori.org) in this layout
can be given instead.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npti_lens.constants import TRAITS
from npti_lens.errors import UserError

SHIPPED_INVENTORY = Path(__file__).parent / "data" / "inventory.csv"
COLUMNS = ("id", "text", "domain", "facet", "facet_name", "keyed")


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    domain: str
    facet: int
    facet_name: str
    keyed: str  # "+" or "-"

    @property
    def sign(self) -> int:
        return 1 if self.keyed == "+" else -1


def load_inventory(path: str | Path | None = None) -> list[Item]:
    """Items of an inventory CSV (the shipped one when `path` is None), in file order."""
    path = Path(path) if path is not None else SHIPPED_INVENTORY
    if not path.is_file():
        raise UserError(f"--inventory: {path} not found (a CSV with columns {','.join(COLUMNS)})")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(
                f"{path}:1: missing column(s) {', '.join(missing)}; the header must be {','.join(COLUMNS)}"
            )
        items, seen = [], set()
        for lineno, row in enumerate(reader, start=2):
            where = f"{path}:{lineno}"
            domain = (row["domain"] or "").strip()
            if domain not in TRAITS:
                raise UserError(f"{where}: domain {domain!r} is not one of {', '.join(TRAITS)}")
            keyed = (row["keyed"] or "").strip()
            if keyed not in ("+", "-"):
                raise UserError(f"{where}: keyed {keyed!r} must be + or -")
            try:
                facet = int(row["facet"])
            except (TypeError, ValueError):
                raise UserError(f"{where}: facet {row['facet']!r} is not a facet number") from None
            text, item_id = (row["text"] or "").strip(), (row["id"] or "").strip()
            if not text or not item_id:
                raise UserError(f"{where}: empty id or text")
            if item_id in seen:
                raise UserError(f"{where}: id {item_id!r} appears twice")
            seen.add(item_id)
            items.append(Item(item_id, text, domain, facet, (row["facet_name"] or "").strip(), keyed))
    if not items:
        raise UserError(f"{path}: no items")
    return items


# ----- scoring: pure functions of option probabilities ----------------------------------------

RATINGS = np.arange(1, 6, dtype=np.float64)


def expected_rating(probs: np.ndarray, *, reversed_scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Expected rating and option mass per row of probs[item, digit 1..5].

    On the reversed scale digit d means rating 6 - d. The probabilities are renormalised over the
    five options; a row with no mass on them has a NaN rating.
    """
    probs = np.asarray(probs, dtype=np.float64)
    mass = probs.sum(-1)
    ratings = RATINGS[::-1] if reversed_scale else RATINGS
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(mass > 0, (probs * ratings).sum(-1) / mass, np.nan)
    return expected, mass


def keyed(scores: np.ndarray, items: list[Item]) -> np.ndarray:
    """Scores with reverse-keyed items reversed (6 - score), so higher always means more of the domain."""
    signs = np.array([it.sign for it in items])
    return np.where(signs > 0, scores, 6.0 - scores)


def cronbach_alpha(x: np.ndarray) -> float:
    """Cronbach's alpha of x[respondent, item]: k/(k-1) * (1 - sum of item variances / variance of totals)."""
    x = np.asarray(x, dtype=np.float64)
    n, k = x.shape
    if k < 2 or n < 2:
        return float("nan")
    item_var = x.var(axis=0, ddof=1).sum()
    total_var = x.sum(axis=1).var(ddof=1)
    return float(k / (k - 1) * (1 - item_var / total_var)) if total_var > 0 else float("nan")


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`, resampling them with replacement."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)
