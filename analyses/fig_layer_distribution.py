"""Figure and table: neurons per layer of every trait pole (count and share of the layer)."""

from __future__ import annotations

from _sources import OUT, sources

from npti_lens.evaluation.figures import layer_distribution as plot
from npti_lens.evaluation.overlap import layer_distribution


def main() -> None:
    for name, sets in sources().items():
        dist = layer_distribution(sets)
        files = dist.save(OUT / name)
        fig = plot(dist, OUT / name / "layers.png")
        print(f"{name}: {files['count']}, {files['share']}, {fig} (+ .pdf)")


if __name__ == "__main__":
    main()
