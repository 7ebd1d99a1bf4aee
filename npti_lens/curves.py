"""Curves a reader checks an instrument by: the judge's learning curve, and each trait pole's
dose-response (the score toward the pole and the fluency against strength, with the P2 prompt and no
intervention as horizontal bands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npti_lens.figures import COLORS, STYLE, _save, plt


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
