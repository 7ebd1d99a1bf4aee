"""Figures, one consistent style, sized for a two-column paper (PNG and, where asked, PDF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"npti": "#1f77b4", "random": "#7f7f7f", "none": "#2ca02c", "persona": "#d62728"}
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "figure.dpi": 150,
}


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, bbox_inches="tight")
    tmp.replace(path)
    plt.close(fig)


def gamma_sweep(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Target-pole fraction and fluency against gamma (mean over traits and poles, +- SEM),
    NPTI vs the random control, with no intervention and the persona prompt as lines."""
    import numpy as np

    path = Path(path)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(6.8, 2.4))
        for ax, metric, label in (
            (axes[0], "target", "target-pole fraction"),
            (axes[1], "fluency", "fluency"),
        ):
            for cond in ("npti", "random"):
                gs = sorted({r["gamma"] for r in rows if r["condition"] == cond})
                vals = [[r[metric] for r in rows if r["condition"] == cond and r["gamma"] == g] for g in gs]
                mean = [float(np.mean(v)) for v in vals]
                sem = [float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0 for v in vals]
                ax.errorbar(
                    gs,
                    mean,
                    yerr=sem,
                    marker="o",
                    ms=3,
                    capsize=2,
                    color=COLORS[cond],
                    label="NPTI" if cond == "npti" else "random neurons",
                )
            for cond in ("none", "persona"):
                vals = [r[metric] for r in rows if r["condition"] == cond]
                if vals:
                    ax.axhline(
                        float(np.mean(vals)),
                        ls="--",
                        lw=1,
                        color=COLORS[cond],
                        label="no intervention" if cond == "none" else "persona prompt",
                    )
            ax.set_xlabel("gamma")
            ax.set_ylabel(label)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0].legend(loc="best", frameon=False)
        _save(fig, path)
    return path
