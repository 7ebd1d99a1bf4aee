"""Inventory files: keyed statements of the Big Five (IPIP-NEO layout), checked row by row.

CSV columns `id,text,domain,facet,facet_name,keyed`; `domain` is a Big Five trait, `facet` its
facet number (1-6 in the IPIP-NEO), `keyed` is `+` (agreeing means more of the domain) or `-`.
The package ships a short inventory written for it (`SHIPPED_INVENTORY`, 60 items: one `+` and one
`-` item per IPIP-NEO facet). The IPIP-NEO-120 or -300 (public domain, ipip.ori.org) in this layout
can be given instead. Beside the files: the scoring of answered items (expected ratings, keying,
Cronbach's alpha, bootstrap intervals) and the result tables of an administration
(`npti_lens.evaluation.profiles` gives the inventory to a model).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npti_lens.core.averages import mean
from npti_lens.core.constants import CFG_FILE, RATING_DIGITS, TRAITS
from npti_lens.core.errors import UserError

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


def rating_and_mass(probs: np.ndarray, *, reversed_scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
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


def rated_mean_ci(
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


@dataclass
class Administration:
    """One condition: option probabilities of every item in both orders (and of the respondents)."""

    condition: str
    p_forward: np.ndarray  # [item, option]
    p_reversed: np.ndarray
    respondents: np.ndarray | None = None  # keyed item scores [respondent, item]

    def scores(self) -> dict[str, np.ndarray]:
        fwd, mass_f = rating_and_mass(self.p_forward)
        rev, mass_r = rating_and_mass(self.p_reversed, reversed_scale=True)
        return {
            "forward": fwd,
            "reversed": rev,
            "score": (fwd + rev) / 2,
            "mass_forward": mass_f,
            "mass_reversed": mass_r,
        }


@dataclass
class InventoryResult:
    """A profile per condition (the first is the model as it is) with item, facet and domain tables."""

    items: list[Item]
    administrations: list[Administration]
    cfg: Any  # npti_lens.evaluation.profiles.InventoryConfig: n_boot, boot_seed, and saved whole
    prompts: dict[str, dict[str, str]] = field(default_factory=dict)  # prompt condition -> stage, personality

    def item_rows(self) -> list[dict[str, Any]]:
        rows = []
        for adm in self.administrations:
            s = adm.scores()
            k = keyed(s["score"], self.items)
            for i, it in enumerate(self.items):
                rows.append(
                    {
                        "condition": adm.condition,
                        "id": it.id,
                        "domain": it.domain,
                        "facet": it.facet,
                        "facet_name": it.facet_name,
                        "keyed": it.keyed,
                        "text": it.text,
                        **{f"p{d}": float(adm.p_forward[i, j]) for j, d in enumerate(RATING_DIGITS)},
                        **{
                            f"p{d}_reversed": float(adm.p_reversed[i, j]) for j, d in enumerate(RATING_DIGITS)
                        },
                        "mass_forward": float(s["mass_forward"][i]),
                        "mass_reversed": float(s["mass_reversed"][i]),
                        "rating_forward": float(s["forward"][i]),
                        "rating_reversed": float(s["reversed"][i]),
                        "rating": float(s["score"][i]),
                        "keyed_score": float(k[i]),
                    }
                )
        return rows

    def _groups(self, key: Any) -> dict[Any, np.ndarray]:
        """Item indices per value of key(item), in first-seen order."""
        groups: dict[Any, list[int]] = {}
        for i, it in enumerate(self.items):
            groups.setdefault(key(it), []).append(i)
        return {g: np.array(ix) for g, ix in groups.items()}

    def facet_rows(self) -> list[dict[str, Any]]:
        rows = []
        for adm in self.administrations:
            k = keyed(adm.scores()["score"], self.items)
            for (domain, facet, name), ix in self._groups(
                lambda it: (it.domain, it.facet, it.facet_name)
            ).items():
                rows.append({"condition": adm.condition, "domain": domain, "facet": facet, "facet_name": name,
                             "score": mean(k[ix], skip_nan=True), "n_items": len(ix)})  # fmt: skip
        return rows

    def domain_rows(self) -> list[dict[str, Any]]:
        base = self.administrations[0]
        base_k = keyed(base.scores()["score"], self.items)
        rows = []
        for adm in self.administrations:
            s = adm.scores()
            k = keyed(s["score"], self.items)
            kf, kr = keyed(s["forward"], self.items), keyed(s["reversed"], self.items)
            for n, (domain, ix) in enumerate(self._groups(lambda it: it.domain).items()):
                seed = self.cfg.boot_seed + n
                lo, hi = rated_mean_ci(k[ix], n_boot=self.cfg.n_boot, seed=seed)
                alpha = (
                    cronbach_alpha(adm.respondents[:, ix]) if adm.respondents is not None else float("nan")
                )
                row = {
                    "condition": adm.condition,
                    "domain": domain,
                    "score": mean(k[ix], skip_nan=True),
                    "alpha": alpha,
                    "ci_low": lo,
                    "ci_high": hi,
                    "option_mass": float(
                        np.mean([s["mass_forward"][ix].mean(), s["mass_reversed"][ix].mean()])
                    ),
                    "score_forward": mean(kf[ix], skip_nan=True),
                    "score_reversed": mean(kr[ix], skip_nan=True),
                    "n_items": len(ix),
                }
                if adm is not base:
                    diff = k[ix] - base_k[ix]
                    row["shift"] = mean(diff, skip_nan=True)
                    row["shift_ci_low"], row["shift_ci_high"] = rated_mean_ci(
                        diff, n_boot=self.cfg.n_boot, seed=seed
                    )
                rows.append(row)
        return rows

    def to_frame(self, table: str = "domains") -> Any:
        import pandas as pd

        return pd.DataFrame(
            {"items": self.item_rows, "facets": self.facet_rows, "domains": self.domain_rows}[table]()
        )

    def save(self, out: str | Path) -> dict[str, Path]:
        """items.csv, facets.csv, domains.csv and cfg.json in `out` (atomic writes)."""
        import dataclasses

        from npti_lens.core.files import to_csv, write_json_atomic, write_text_atomic

        out = Path(out)
        files = {}
        for name, rows in (
            ("items", self.item_rows()),
            ("facets", self.facet_rows()),
            ("domains", self.domain_rows()),
        ):
            files[name] = out / f"{name}.csv"
            write_text_atomic(files[name], to_csv(_union_columns(rows)))
        write_json_atomic(out / CFG_FILE, {"inventory": dataclasses.asdict(self.cfg), "n_items": len(self.items),
                                             "conditions": [a.condition for a in self.administrations],
                                             "prompt_conditions": self.prompts})  # fmt: skip
        return files


def _union_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every column any row has (empty where a row lacks it), first-seen order."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return [{c: r.get(c, "") for c in cols} for r in rows]
