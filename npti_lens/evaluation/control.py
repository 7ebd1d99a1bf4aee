"""The judge's positive control: does the judge see the P2 persona prompt on held-out questions?

The P2 prompt states the persona outright, so a judge that cannot tell its answers from
un-prompted ones cannot tell an induction's either. Per trait, on the same held-out questions:

- `auroc`: P2-high answers against P2-low answers, ranked by the judge's score toward the high pole
  (minus its score toward the low pole), with a 95% percentile bootstrap interval (questions
  resampled, both answers of a question together);
- per pole, the paired effect of the P2 prompt: score toward the pole of the P2 answer minus that
  of the un-prompted answer, question by question: mean, bootstrap interval, and the two-sided
  paired permutation p that the induction cells use (`npti_lens.evaluation.evidence`). The judge `sees` a pole
  when that p < alpha (0.05, per pole, unadjusted: a gate, not a finding) and the effect is toward it.

Every NPTI, random and vector cell of a pole the judge does not see gets the verdict `judge blind`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npti_lens.core.constants import POLES
from npti_lens.core.errors import UserError
from npti_lens.core.files import read_json, write_json_atomic
from npti_lens.evaluation.evidence import ALPHA, mean_ci, permutation_p, resamples

CONTROL_FILE = "control.json"
KIND = "npti_lens.control"
CONDITIONS = ("none", "high", "low")  # no prompt, P2 of the high pole, P2 of the low pole


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive outranks a negative), ties counting half (Mann-Whitney)."""
    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


@dataclass
class PoleControl:
    trait: str
    pole: str
    n: int
    p2: float  # mean score toward the pole under P2 of the pole
    none: float  # ... and with no prompt
    effect: float
    ci_low: float
    ci_high: float
    p: float
    sees: bool


@dataclass
class TraitControl:
    trait: str
    n: int
    auroc: float
    auroc_low: float
    auroc_high: float
    poles: dict[str, PoleControl] = field(default_factory=dict)

    def line(self) -> str:
        """One line a person reads: AUROC, and per pole the effect and whether the judge sees it."""
        poles = "; ".join(
            f"{p}: P2 {c.effect:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}] p={c.p:.3f} "
            f"{'sees' if c.sees else 'BLIND'}"
            for p, c in self.poles.items()
        )
        return (
            f"{self.trait:<18}P2 high vs low AUROC {self.auroc:.2f} [{self.auroc_low:.2f}, {self.auroc_high:.2f}] "
            f"(n={self.n}); {poles}"
        )


def trait_control(
    trait: str,
    toward: dict[str, dict[str, list[float]]],
    *,
    alpha: float = ALPHA,
    n_boot: int = 2000,
    seed: int = 0,
) -> TraitControl:
    """The control of one trait. `toward[condition][pole]`: per question (the same questions, in
    order, under every condition), the judge's score toward `pole` of the answer given under
    `condition` (`none`, or P2 of the `high` / `low` pole)."""
    missing = [(c, p) for c in CONDITIONS for p in POLES if p not in toward.get(c, {})]
    if missing:
        raise UserError(
            f"{trait}: the positive control needs scores of {missing[0][0]} toward {missing[0][1]}"
        )
    arr = {c: {p: np.asarray(toward[c][p], dtype=float) for p in POLES} for c in CONDITIONS}
    n = len(arr["none"]["high"])
    if n < 2 or any(len(a) != n for c in CONDITIONS for a in arr[c].values()):
        raise UserError(
            f"{trait}: the positive control needs the same 2 or more questions under every condition"
        )
    pos = arr["high"]["high"] - arr["high"]["low"]  # P2-high answers, oriented toward high
    neg = arr["low"]["high"] - arr["low"]["low"]
    idx = resamples(n, n_boot, seed)
    boots = np.array([auroc(pos[i], neg[i]) for i in idx])
    lo, hi = np.quantile(boots, [0.025, 0.975])
    out = TraitControl(trait, n, auroc(pos, neg), float(lo), float(hi))
    for p in POLES:
        d = arr[p][p] - arr["none"][p]
        pv = permutation_p(d, seed=seed)
        ci = mean_ci(d, n_boot=n_boot, seed=seed)
        out.poles[p] = PoleControl(trait, p, n, float(arr[p][p].mean()), float(arr["none"][p].mean()),
                                   float(d.mean()), *ci, pv, bool(pv < alpha and d.mean() > 0))  # fmt: skip
    return out


@dataclass
class Control:
    """The positive control of every trait measured: `sees(trait, pole)` gates the verdicts."""

    traits: dict[str, TraitControl]
    alpha: float = ALPHA
    judge: dict[str, Any] = field(default_factory=dict)  # what judged (kind, folder, reader)

    def sees(self, trait: str, pole: str) -> bool | None:
        """Whether the judge saw P2 of this pole (None: not measured)."""
        t = self.traits.get(trait)
        return None if t is None else t.poles[pole].sees

    def lines(self) -> list[str]:
        return [t.line() for t in self.traits.values()]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "alpha": self.alpha,
            "judge": self.judge,
            "traits": {
                t: {**{k: v for k, v in asdict(c).items() if k != "poles"}, "poles": {p: asdict(pc) for p, pc in c.poles.items()}}
                for t, c in self.traits.items()
            },
        }  # fmt: skip

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONTROL_FILE
        write_json_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Control:
        data = read_json(path)
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise UserError(
                f"{path} is not a positive control's {CONTROL_FILE}; make one with npti judge control"
            )
        try:
            traits = {
                t: TraitControl(**{k: v for k, v in c.items() if k != "poles"},
                                poles={p: PoleControl(**pc) for p, pc in c["poles"].items()})
                for t, c in data["traits"].items()
            }  # fmt: skip
        except (KeyError, TypeError) as e:
            raise UserError(
                f"{path} is damaged ({type(e).__name__}: {e}); run npti judge control again"
            ) from None
        return cls(traits, float(data.get("alpha", ALPHA)), dict(data.get("judge", {})))
