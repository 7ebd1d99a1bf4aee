"""Figures a reader checks an instrument by: the judge's learning curve, each trait pole's
dose-response (the score toward the pole and the fluency against strength, with the P2 prompt and no
intervention as horizontal bands), and the per-cell evidence (NPTI against no intervention and the
random controls, with the verdicts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npti_lens.evaluation.figures import COLORS, STYLE, _save, plt


def learning_curve(validity: dict[str, dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Held-out AUROC (grouped by question) against training answers, one line per trait."""
    path = Path(path)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.4, 2.4))
        for trait, v in validity.items():
            pts = v.get("learning_curve") or []
            ax.plot([p["n_answers"] for p in pts], [p["auroc"] for p in pts], marker="o", ms=3, label=trait)
        ax.axhline(0.5, color="black", lw=0.5, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training answers (1, 2, 4, ... per question and pole)")
        ax.set_ylabel("held-out AUROC (grouped by question)")
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=6)
        _save(fig, path)
    return path


def dose_response(
    points: list[dict[str, Any]],
    bands: dict[str, tuple[float, float, float]],
    path: str | Path,
    *,
    title: str,
    floor: float | None = None,
    chosen: float | None = None,
    ylabel: str = "P(pole)",
) -> Path:
    """Two panels against strength (log scale): the mean score toward the pole, and the fluency.

    `points`: rows with `method` (npti, random, vector, random-vector), `strength`, `target`,
    `fluency`; `bands`: `none` and `p2` as (mean, low, high) of the score; `chosen`: NPTI's chosen
    strength, marked; `floor`: the fluency floor, drawn."""
    path = Path(path)
    styles = {"npti": ("-", COLORS["npti"], "NPTI"), "random": ("--", COLORS["random"], "random neurons"),
              "vector": ("-", COLORS["vector"], "vector"), "random-vector": ("--", "#c5b0d5", "random vector")}  # fmt: skip
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(6.0, 2.3))
        for method, (ls, color, label) in styles.items():
            pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["strength"])
            if not pts:
                continue
            xs = [p["strength"] for p in pts]
            axes[0].plot(xs, [p["target"] for p in pts], ls=ls, marker="o", ms=3, color=color, label=label)
            axes[1].plot(xs, [p["fluency"] for p in pts], ls=ls, marker="o", ms=3, color=color, label=label)
        for name, color, label in (
            ("none", COLORS["none"], "no intervention"),
            ("p2", COLORS["p2"], "P2 prompt"),
        ):
            if name in bands:
                mean, lo, hi = bands[name]
                axes[0].axhline(mean, color=color, lw=0.8, label=label)
                axes[0].axhspan(lo, hi, color=color, alpha=0.15, lw=0)
        if floor is not None:
            axes[1].axhline(floor, color="black", lw=0.6, ls=":", label="fluency floor")
        if chosen is not None:
            for ax in axes:
                ax.axvline(chosen, color=COLORS["npti"], lw=0.6, ls=":")
        for ax, lab in ((axes[0], ylabel), (axes[1], "fluency")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("strength (gamma; coefficient for vectors)")
            ax.set_ylabel(lab)
            ax.grid(alpha=0.3)
        axes[1].set_ylim(-0.02, 1.02)
        axes[0].legend(frameon=False, fontsize=6)
        fig.suptitle(title, fontsize=8)
        _save(fig, path)
    return path


def forest_panels(cells: list[dict[str, Any]]) -> tuple[list[tuple[str, list[dict[str, Any]]]], list[str]]:
    """The evidence figure's panels (title, cells top to bottom) and its row labels: one panel per
    gamma where every cell was measured at every gamma, else one untitled panel with each cell's
    strength in its label."""
    gammas = sorted({float(c["gamma"]) for c in cells})
    name = [f"{c['trait']} {c['pole']}" for c in cells]
    order = list(dict.fromkeys(name))
    at = {g: [n for n, c in zip(name, cells, strict=True) if float(c["gamma"]) == g] for g in gammas}
    if all(sorted(at[g]) == sorted(order) for g in gammas):
        key = {n: i for i, n in enumerate(order)}
        return [(f"gamma {g:g}", sorted((c for c in cells if float(c["gamma"]) == g),
                                        key=lambda c: key[f"{c['trait']} {c['pole']}"])) for g in gammas], order  # fmt: skip
    labels = [f"{n}, {'vector ' if c.get('method') == 'vector' else 'γ '}{float(c['gamma']):g}"
              for n, c in zip(name, cells, strict=True)]  # fmt: skip
    return [("", list(cells))], labels


def evidence_forest(cells: list[dict[str, Any]], path: str | Path, *, ylabel: str = "trait score") -> Path:
    """Per cell (trait pole), NPTI minus no intervention and NPTI minus the random controls, with 95%
    bootstrap intervals and the verdict: PNG and PDF. One panel per gamma where every cell was
    measured at every gamma (the organism's grid); else one panel, each cell at its own strength
    (the real demo's chosen one), named in its label."""
    import numpy as np

    path = Path(path)
    panels, labels = forest_panels(cells)
    grid = bool(panels[0][0])  # titled panels: the gamma grid
    marks = {"specific": "*", "wrong way": "x", "not distinguishable": "", "judge blind": "?"}
    width = 1.9 * len(panels) + 1.2 if grid else 3.6
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, len(panels), figsize=(width, 0.22 * len(labels) + 1.2), sharey=True, layout="constrained"
        )
        axes = np.atleast_1d(axes)
        for ax, (title, rows) in zip(axes, panels, strict=True):
            ys = np.arange(len(rows))[::-1]
            for key, dy, color, label in (
                ("none", 0.15, COLORS["none"], "vs no intervention"),
                ("control", -0.15, COLORS["random"], "vs random controls"),
            ):
                x = np.array([c[f"diff_{key}"] for c in rows])
                lo = x - np.array([c[f"ci_{key}_low"] for c in rows])
                hi = np.array([c[f"ci_{key}_high"] for c in rows]) - x
                ax.errorbar(
                    x, ys + dy, xerr=[lo, hi], fmt="o", ms=2.5, color=color, elinewidth=0.8, label=label
                )
            for y, c in zip(ys, rows, strict=True):
                ax.annotate(
                    marks[c["verdict"]],
                    (1.01, y),
                    xycoords=("axes fraction", "data"),
                    fontsize=7,
                    va="center",
                )
            ax.axvline(0, color="black", lw=0.5)
            if title:
                ax.set_title(title)
            ax.grid(axis="x", alpha=0.3)
        axes[0].set_yticks(np.arange(len(labels))[::-1], labels)
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, frameon=False, fontsize=6, loc="outside upper center", ncol=2)
        fig.supxlabel(
            f"NPTI's change in {ylabel}\n(95% bootstrap intervals over questions; * specific, x wrong way, "
            "? judge blind)",
            fontsize=7,
        )
        _save(fig, path, pdf=True)
    return path
