"""Figure and tables: overlap of the trait poles' neuron sets (Jaccard heatmap, all matrices)."""

from __future__ import annotations

from _sources import OUT, sources

from npti_lens.evaluation.figures import overlap_heatmap
from npti_lens.evaluation.overlap import overlap


def main() -> None:
    for name, sets in sources().items():
        ov = overlap(sets)
        ov.save(OUT / name)
        fig = overlap_heatmap(ov, OUT / name / "overlap_jaccard.png")
        print(f"{name}: {OUT / name}/overlap_*.csv, {fig} (+ .pdf)")
        for note in ov.notes:
            print(f"  {note}")


if __name__ == "__main__":
    main()
