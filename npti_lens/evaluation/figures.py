"""Figures, one consistent style, sized for a two-column paper (PNG and, where asked, PDF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from npti_lens.core.constants import TRAITS  # noqa: E402

COLORS = {
    "npti": "#1f77b4",
    "random": "#7f7f7f",
    "none": "#2ca02c",
    "persona": "#d62728",
    "p2": "#d62728",
    "simple": "#ff7f0e",
    "vector": "#9467bd",
}
# The methods the paper compares, in the order of its figures, with their labels.
METHODS = {
    "none": "no intervention",
    "simple": "simple prompt",
    "p2": "P2 (persona)",
    "npti": "NPTI",
    "random": "random neurons",
    "vector": "mean-difference vector",
}
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "figure.dpi": 150,
}


def _save(fig: Any, path: Path, pdf: bool = False) -> None:
    """Write `path` (and, with `pdf`, the same figure as .pdf beside it) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for target in (path, path.with_suffix(".pdf")) if pdf else (path,):
        tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
        fig.savefig(tmp, bbox_inches="tight")
        tmp.replace(target)
    plt.close(fig)


def layer_distribution(dist: Any, path: str | Path, *, share: bool = True) -> Path:
    """Neurons per layer for every pole (share of the layer's neurons, or counts): PNG and PDF."""
    import numpy as np

    path = Path(path)
    values = dist.share * 100 if share else dist.counts
    n_layers = values.shape[1]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.8, 2.6))
        cmap = plt.get_cmap("tab10")
        for i, name in enumerate(dist.names):
            trait_idx = TRAITS.index(name.rsplit("_", 1)[0])  # a trait keeps its colour if others are missing
            ax.plot(
                np.arange(n_layers),
                values[i],
                color=cmap(trait_idx),
                lw=1.2,
                ls="-" if name.endswith("_high") else "--",
                label=name.replace("_", " "),
            )
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
        ax.set_ylabel("% of the layer's neurons" if share else "neurons")
        ax.grid(alpha=0.3)
        ax.legend(ncol=2, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _save(fig, path, pdf=True)
    return path


def overlap_heatmap(ov: Any, path: str | Path, metric: str = "jaccard") -> Path:
    """Pairwise overlap of the poles with the value written in every cell: PNG and PDF."""
    import numpy as np

    path = Path(path)
    m = getattr(ov, metric)
    labels = [n.replace("_", " ") for n in ov.names]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.8, 4.2))
        shown = np.where(np.eye(len(labels), dtype=bool), np.nan, m)
        im = ax.imshow(shown, cmap="viridis")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        for i in range(len(labels)):
            for j in range(len(labels)):
                if i != j:
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=5.5,
                        color="white" if shown[i, j] < np.nanmax(shown) * 0.6 else "black",
                    )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=metric.replace("_", " "))
        _save(fig, path, pdf=True)
    return path


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
            ax.set_xlabel("gamma (error bars: +-1 SEM over trait poles)")
            ax.set_ylabel(label)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0].legend(loc="best", frameon=False)
        _save(fig, path, pdf=True)
    return path


def retention_vs_trait(points: list[dict[str, Any]], path: str | Path) -> Path:
    """Trait score against the perplexity of neutral text, one point per gamma: PNG and PDF."""
    path = Path(path)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.3, 2.6))
        xs = [p["perplexity"] for p in points]
        ys = [p["trait_score"] for p in points]
        ax.plot(xs, ys, marker="o", ms=3, color=COLORS["npti"])
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(
                "none" if p["gamma"] is None else f"gamma {p['gamma']:g}",
                (x, y),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel("perplexity of neutral answers")
        ax.set_ylabel("target-pole fraction")
        ax.grid(alpha=0.3)
        _save(fig, path, pdf=True)
    return path


def inventory_profile(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Domain scores (1-5) with bootstrap intervals over items, one bar per condition: PNG and PDF."""
    import numpy as np

    path = Path(path)
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    domains = [t for t in TRAITS if any(r["domain"] == t for r in rows)]
    by = {(r["condition"], r["domain"]): r for r in rows}
    width = 0.8 / len(conditions)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.4, 2.4))
        cmap = plt.get_cmap("tab10")
        for c, cond in enumerate(conditions):
            xs = np.arange(len(domains)) + (c - (len(conditions) - 1) / 2) * width
            rs = [by[(cond, d)] for d in domains]
            ys = np.array([r["score"] for r in rs])
            err = np.array([[y - r["ci_low"], r["ci_high"] - y] for y, r in zip(ys, rs, strict=True)]).T
            color = COLORS["none"] if cond == "none" else cmap(c % 10)
            ax.bar(xs, ys - 1, width, bottom=1, color=color, label="no induction" if cond == "none" else cond)
            ax.errorbar(
                xs, ys, yerr=np.nan_to_num(err), fmt="none", ecolor="black", elinewidth=0.7, capsize=1.5
            )
        ax.axhline(3, color="black", lw=0.5, ls=":")
        ax.set_xticks(np.arange(len(domains)), [d[0] for d in domains])
        ax.set_ylim(1, 5)
        ax.set_ylabel("domain score (1-5; 95% bootstrap CI)")
        if not np.isfinite([r["score"] for r in rows]).any():
            ax.text(
                0.5,
                0.5,
                "no scores: the model put no probability\non the options 1-5 (see option_mass)",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=6,
            )
        ax.set_xlabel("  ".join(f"{d[0]} = {d}" for d in domains), fontsize=5)
        ax.legend(frameon=False, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path, pdf=True)
    return path


def method_table(
    rows: list[dict[str, Any]], gamma: float | None = None
) -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {pole name: (score, sem)}} of the methods the paper compares, in its order.

    `rows` carry trait, pole, condition (none/simple/p2 or persona/npti/random), gamma, `score`
    and optionally `sem`. NPTI and the random control are taken at `gamma` (needed when the rows
    hold several). Methods missing from the rows are left out.
    """
    import math

    from npti_lens.core.constants import pole_name

    rows = [{**r, "condition": "p2" if r["condition"] == "persona" else r["condition"]} for r in rows]
    for cond in ("npti", "random"):
        gs = sorted({float(r["gamma"]) for r in rows if r["condition"] == cond})
        if len(gs) > 1 and gamma is None:
            raise ValueError(f"the {cond} rows hold gammas {gs}: choose one")
    npti_gammas = sorted({float(r["gamma"]) for r in rows if r["condition"] == "npti"})
    if gamma is not None and npti_gammas and float(gamma) not in npti_gammas:
        # a random control run at other gammas is simply left out at this one
        raise ValueError(f"the npti rows have no gamma {gamma:g} (they hold {npti_gammas})")
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for r in rows:
        if r["condition"] not in METHODS:
            continue
        if r["condition"] in ("npti", "random") and gamma is not None and float(r["gamma"]) != float(gamma):
            continue
        sem = r.get("sem")
        sem = float(sem) if sem not in (None, "") and math.isfinite(float(sem)) else 0.0
        table.setdefault(r["condition"], {})[pole_name(r["trait"], r["pole"])] = (float(r["score"]), sem)
    if not table:
        raise ValueError("no rows of a known method (none, simple, p2/persona, npti, random)")
    return {m: table[m] for m in METHODS if m in table}


def method_comparison(rows: list[dict[str, Any]], path: str | Path, *, gamma: float | None = None,
                      ylabel: str = "trait score") -> Path:  # fmt: skip
    """Bars per trait pole of every method in `method_table(rows, gamma)`: PNG and PDF."""
    import numpy as np

    from npti_lens.core.constants import pole_name

    path = Path(path)
    table = method_table(rows, gamma)
    poles = [
        pole_name(t, p)
        for t in TRAITS
        for p in ("high", "low")
        if any(pole_name(t, p) in v for v in table.values())
    ]
    width = 0.8 / len(table)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.8, 2.4))
        for i, (m, vals) in enumerate(table.items()):
            xs = np.arange(len(poles)) + (i - (len(table) - 1) / 2) * width
            ys = [vals[p][0] if p in vals else np.nan for p in poles]
            es = [vals[p][1] if p in vals else 0.0 for p in poles]
            label = METHODS[m] + (
                f", gamma {gamma:g}" if m in ("npti", "random") and gamma is not None else ""
            )
            ax.bar(xs, ys, width, color=COLORS[m], label=label)
            # a marker at each bar's top, so that a bar of height 0 is still seen
            ax.scatter(xs, ys, marker="_", s=(width * 40) ** 2, color=COLORS[m], linewidths=1.5, zorder=3)
            ax.errorbar(xs, ys, yerr=es, fmt="none", ecolor="black", elinewidth=0.6, capsize=1)
        short = {"Openness": "Open.", "Conscientiousness": "Consc.", "Extraversion": "Extra.",
                 "Agreeableness": "Agree.", "Neuroticism": "Neuro."}  # fmt: skip
        ax.set_xticks(
            np.arange(len(poles)), [short[p.rsplit("_", 1)[0]] + "\n" + p.rsplit("_", 1)[1] for p in poles]
        )
        ax.set_ylabel(
            ylabel
            + (
                "\n(error bars: +-1 SEM over answers)"
                if any(e for v in table.values() for _, e in v.values())
                else ""
            )
        )
        ax.grid(axis="y", alpha=0.3)
        ax.legend(ncol=len(table), frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    _save(fig, path, pdf=True)
    return path


def tune_curve(
    curve: list[dict[str, Any]], choice: dict[str, Any] | None, path: str | Path, *, label: str
) -> Path:
    """Effect, fluency and NLL cost against strength, the chosen point marked: PNG and PDF."""
    path = Path(path)
    pts = [p for p in curve if p["strength"] is not None]
    xs = [p["strength"] for p in pts]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(6.8, 2.0))
        for ax, key, title in (
            (axes[0], "effect", "effect on the trait score"),
            (axes[1], "fluency", "fluency"),
            (axes[2], "delta_nll", "NLL per token, change"),
        ):
            ax.plot(xs, [p[key] for p in pts], marker="o", ms=3, color=COLORS["npti"])
            if choice is not None:
                ax.plot([choice["strength"]], [choice[key]], marker="*", ms=9, color="black", ls="none")
            ax.set_title(title)
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
        _save(fig, path, pdf=True)
    return path
