"""What a monitor's numbers are worth, and its figure.

`validity()` measures the readouts on the positive control's answer sets (per trait: no prompt, the
P2 persona prompt of each pole, on held-out questions): AUROC of each readout separating P2-high
from P2-low answers and each P2 set from the un-prompted answers, at the last prompt token and over
the answer, and the correlation of each readout with the judge's score of the answer. The readout
is the high pole's (the low pole's is its negative). Answers made under an NPTI induction are not
measured: NPTI's own neurons read on them see the edit, not the text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from npti_lens.core.errors import UserError
from npti_lens.evaluation.control import auroc
from npti_lens.evaluation.evidence import resamples
from npti_lens.evaluation.figures import COLORS, STYLE, _save, plt

READOUTS = (("npti", "prompt"), ("npti", "answer"), ("vector", "prompt"), ("vector", "answer"))


def _ci(pos: np.ndarray, neg: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the AUROC, resampling each group's answers."""
    bp, bn = resamples(len(pos), n_boot, seed), resamples(len(neg), n_boot, seed + 1)
    boots = np.array([auroc(pos[i], neg[j]) for i, j in zip(bp, bn, strict=True)])
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(lo), float(hi)


def validity(sets: dict[str, dict[str, list[dict[str, Any]]]], *, n_boot: int = 1000,
             seed: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """One row per trait and readout. `sets[trait]` holds monitor rows of the trait's high-pole
    readout under `none`, `high` (P2 high) and `low` (P2 low), each row with the judge's `p_high`."""
    out = []
    for trait, by in sets.items():
        if set(by) != {"none", "high", "low"}:
            raise UserError(f"{trait}: validity needs the none, high and low (P2) sets, got {sorted(by)}")
        if any(r.get("induced") for rows in by.values() for r in rows):
            raise UserError(
                f"{trait}: an induced answer in the control sets; measure un-induced answers only"
            )
        for readout, at in READOUTS:
            key = f"{readout}_{at}"
            x = {c: np.array([r[key] for r in rows], dtype=float) for c, rows in by.items()}
            if any(np.isnan(v).any() for v in x.values()):
                continue  # no direction, or an empty answer
            judged = np.concatenate([[r["p_high"] for r in by[c]] for c in ("none", "high", "low")])
            both = np.concatenate([x["none"], x["high"], x["low"]])
            lo, hi = _ci(x["high"], x["low"], n_boot, seed)
            out.append({
                "trait": trait, "readout": readout, "at": at, "n": len(x["high"]),
                "auroc_p2": round(auroc(x["high"], x["low"]), 3), "auroc_p2_low": round(lo, 3),
                "auroc_p2_high": round(hi, 3),
                "auroc_high_vs_none": round(auroc(x["high"], x["none"]), 3),
                "auroc_none_vs_low": round(auroc(x["none"], x["low"]), 3),
                "r_judge": round(float(np.corrcoef(both, judged)[0, 1]), 3),
                "rho_judge": round(float(sps.spearmanr(both, judged).statistic), 3),
            })  # fmt: skip
    return out


def trace_figure(results: dict[str, list[dict[str, Any]]], title: str, path: str | Path,
                 n_traces: int = 3) -> Path:  # fmt: skip
    """One row per answer (the first of each of up to `n_traces` sets): its npti readout (and the
    vector readout, right axis) per token, under its own tokens; last row: each set's answer means
    (boxes) and forecasts (dots) for each readout."""
    path = Path(path)
    names = list(results)
    shown = [n for n in names if results[n] and results[n][0]["trace"]["tokens"]][:n_traces]
    kinds = ["npti"] + (
        ["vector"] if any(r["vector_answer"] is not None for v in results.values() for r in v) else []
    )
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(7.2, 1.5 * len(shown) + 2.4))
        grid = fig.add_gridspec(len(shown) + 1, 2, height_ratios=[1.0] * len(shown) + [1.4], hspace=1.1)
        for row, name in enumerate(shown):
            trace = results[name][0]["trace"]
            ax = fig.add_subplot(grid[row, :])
            ax.plot(trace["npti"], color=COLORS["npti"], lw=1, marker=".", ms=2)
            ax.axhline(0, color=COLORS["npti"], lw=0.5, ls=":")
            ax.set_ylabel("npti", color=COLORS["npti"])
            if trace["vector"] is not None:
                twin = ax.twinx()
                twin.plot(trace["vector"], color=COLORS["p2"], lw=1, alpha=0.8)
                twin.set_ylabel("vector", color=COLORS["p2"])
            ax.set_xticks(range(len(trace["tokens"])))
            ax.set_xticklabels(
                [t.replace("\n", "\\n")[:10] for t in trace["tokens"]], rotation=90, fontsize=5
            )
            ax.set_xlim(-0.5, len(trace["tokens"]) - 0.5)
            ax.set_title(f"{name}: {results[name][0].get('question', '')[:90]}", fontsize=7, loc="left")
        for k, kind in enumerate(kinds):
            ax = fig.add_subplot(grid[len(shown), k])
            ax.boxplot([[r[f"{kind}_answer"] for r in results[n] if r[f"{kind}_answer"] is not None] for n in names],
                       showfliers=False)  # fmt: skip
            for i, n in enumerate(names):
                ys = [r[f"{kind}_prompt"] for r in results[n] if r[f"{kind}_prompt"] is not None]
                ax.plot(np.full(len(ys), i + 1.3), ys, ".", ms=2, color="black")
            ax.set_xticks(range(1, len(names) + 1))
            ax.set_xticklabels([n[:22] for n in names], rotation=30, ha="right", fontsize=6)
            ax.set_title(f"{kind}: answer mean (box), forecast (dots)")
        fig.suptitle(f"{title}: readout per token and per answer", fontsize=8)
        _save(fig, path)
    return path
