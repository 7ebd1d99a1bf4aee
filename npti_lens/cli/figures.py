"""`npti figures`: paper figures from stored results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from npti_lens.cli._common import Command, writable_dir
from npti_lens.core.errors import UserError


def figures_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for the figures")
    p.add_argument("--neurons", default=None, help="neuron sets: layer distribution and overlap heatmap")
    p.add_argument(
        "--demo", default=None, help="a npti demo folder: the gamma sweep and the method comparison"
    )
    p.add_argument(
        "--scores",
        nargs="+",
        default=None,
        help="npti score folders (none, simple, p2, npti, random): method comparison",
    )
    p.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="gamma of NPTI in the method comparison (demo: its --compare-gamma)",
    )


def figures(args: argparse.Namespace) -> None:
    from npti_lens.core.files import read_json, read_summary
    from npti_lens.evaluation import figures

    out = writable_dir(args.out)  # figures are remade from stored results: writable is enough
    made = []
    if args.neurons:
        from npti_lens.evaluation.overlap import layer_distribution, overlap
        from npti_lens.method.neurons import load_neuron_sets

        sets = load_neuron_sets(args.neurons)
        made.append(figures.layer_distribution(layer_distribution(sets), out / "layers.png"))
        made.append(figures.overlap_heatmap(overlap(sets), out / "overlap_jaccard.png"))
    if args.demo:
        demo = read_json(Path(args.demo) / "demo_results.json")
        rows = demo.get("rows")
        if not rows:
            raise UserError(f"--demo: {args.demo}/demo_results.json holds no rows; run npti demo first")
        made.append(figures.gamma_sweep(rows, out / "gamma_sweep.png"))
        if any(r["condition"] == "simple" for r in rows):  # demos of version 0.1 lack the simple prompt
            scored = [{**r, "score": r["target"]} for r in rows]
            gamma = args.gamma if args.gamma is not None else demo.get("config", {}).get("compare_gamma", 3.0)
            made.append(_method_figure(scored, out / "method_comparison.png", gamma, "target-pole fraction"))
    if args.scores:
        rows = []
        for folder in args.scores:
            for r in read_summary(Path(folder) / "summary.csv", flag="--scores"):
                rows.append({**r, "score": r["trait_score_mean"], "sem": r["trait_score_sem"]})
        made.append(_method_figure(rows, out / "method_comparison.png", args.gamma, "trait score"))
    if not made:
        raise UserError(
            "npti figures: nothing to draw; pass --neurons NEURONS, --demo DEMO_DIR and/or --scores DIR"
        )
    for path in made:
        print(path)


def _method_figure(rows: list[dict[str, Any]], path: Path, gamma: float | None, ylabel: str) -> Path:
    from npti_lens.evaluation import figures

    try:
        return figures.method_comparison(rows, path, gamma=gamma, ylabel=ylabel)
    except ValueError as e:
        raise UserError(f"method comparison: {e}; choose it with --gamma") from None


COMMANDS = [
    Command(("figures",), "paper figures from stored results (PNG; PDF where noted)", figures_flags, figures)
]
