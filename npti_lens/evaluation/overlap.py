"""Stage 8: analyses of neuron sets: overlap across trait poles and distribution over layers.

Functions take neuron sets and return result objects with `.to_frame()` and `.save(dir)`; nothing
here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import hypergeom

from npti_lens.core.constants import POLES, TRAITS, opposite, pole_name
from npti_lens.core.errors import UserError
from npti_lens.core.files import write_json_atomic, write_text_atomic
from npti_lens.method.neurons import NeuronSet

OVERLAP_METRICS = ("shared", "jaccard", "overlap_coefficient", "p_value")


def _ordered(sets: dict[str, NeuronSet]) -> list[NeuronSet]:
    """Sets in trait order (high then low); all must describe the same model shape."""
    order = [pole_name(t, p) for t in TRAITS for p in POLES]
    out = [sets[n] for n in order if n in sets]
    shapes = {(s.n_layers, s.d_mlp) for s in out}
    if len(shapes) != 1:
        raise UserError(f"neuron sets of different model shapes cannot be compared: {sorted(shapes)}")
    return out


def _matrix_csv(names: list[str], m: np.ndarray) -> str:
    lines = ["," + ",".join(names)]
    for name, row in zip(names, m, strict=True):
        lines.append(
            name + "," + ",".join(repr(float(v)) if m.dtype.kind == "f" else str(int(v)) for v in row)
        )
    return "\n".join(lines) + "\n"


@dataclass
class Overlap:
    """Pairwise overlap of trait-pole neuron sets, as matrices over `names`."""

    names: list[str]
    sizes: np.ndarray
    n_total: int
    shared: np.ndarray
    jaccard: np.ndarray
    overlap_coefficient: np.ndarray
    expected: np.ndarray  # shared neurons expected by chance: |A| |B| / N
    p_value: np.ndarray  # one-sided hypergeometric P(shared >= observed); NaN on the diagonal
    notes: list[str] = field(default_factory=list)

    def to_frame(self, metric: str = "jaccard") -> Any:
        import pandas as pd

        if metric not in OVERLAP_METRICS and metric != "expected":
            raise ValueError(f"unknown overlap metric {metric!r}")
        return pd.DataFrame(getattr(self, metric), index=self.names, columns=self.names)

    def save(self, folder: str | Path) -> dict[str, Path]:
        folder = Path(folder)
        files = {}
        for metric in (*OVERLAP_METRICS, "expected"):
            path = folder / f"overlap_{metric}.csv"
            write_text_atomic(path, _matrix_csv(self.names, getattr(self, metric)))
            files[metric] = path
        files["json"] = folder / "overlap.json"
        write_json_atomic(
            files["json"],
            {"names": self.names, "sizes": self.sizes.tolist(), "n_total": self.n_total, "notes": self.notes},
        )
        return files


def overlap(sets: dict[str, NeuronSet]) -> Overlap:
    """Shared neurons, Jaccard index, overlap coefficient and hypergeometric significance."""
    ordered = _ordered(sets)
    names = [s.name for s in ordered]
    n_total = ordered[0].n_layers * ordered[0].d_mlp
    flats = [set(s.flat().tolist()) for s in ordered]
    k = len(ordered)
    sizes = np.array([len(f) for f in flats])
    shared = np.array([[len(flats[i] & flats[j]) for j in range(k)] for i in range(k)])
    union = sizes[:, None] + sizes[None, :] - shared
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.where(union > 0, shared / union, np.nan)
        smaller = np.minimum(sizes[:, None], sizes[None, :])
        coef = np.where(smaller > 0, shared / smaller, np.nan)
    expected = sizes[:, None] * sizes[None, :] / n_total
    p = hypergeom.sf(shared - 1, n_total, sizes[:, None], sizes[None, :])
    np.fill_diagonal(p, np.nan)
    notes = []
    for t in TRAITS:
        hi, lo = pole_name(t, "high"), pole_name(t, opposite("high"))
        if hi in names and lo in names:
            n = int(shared[names.index(hi), names.index(lo)])
            if n == 0:
                notes.append(
                    f"{hi} and {lo} share no neuron: under the NPTI rule a shared neuron would need "
                    "a positive activation difference both ways, so opposite poles are disjoint."
                )
            else:
                notes.append(
                    f"{hi} and {lo} share {n} neurons: the sets were padded to --min-neurons past "
                    "the neurons with a positive difference, which opposite poles can both reach."
                )
    return Overlap(
        names=names,
        sizes=sizes,
        n_total=n_total,
        shared=shared,
        jaccard=jaccard,
        overlap_coefficient=coef,
        expected=expected,
        p_value=p,
        notes=notes,
    )


@dataclass
class LayerDistribution:
    """Neurons per layer of every pole, as counts and as a share of the layer's neurons."""

    names: list[str]
    counts: np.ndarray  # [pole, layer]
    d_mlp: int

    @property
    def share(self) -> np.ndarray:
        return self.counts / self.d_mlp

    def to_frame(self, kind: str = "count") -> Any:
        import pandas as pd

        values = self.counts if kind == "count" else self.share
        return pd.DataFrame(values, index=self.names, columns=list(range(self.counts.shape[1])))

    def save(self, folder: str | Path) -> dict[str, Path]:
        folder = Path(folder)
        layers = [str(i) for i in range(self.counts.shape[1])]
        files = {"count": folder / "layers.csv", "share": folder / "layers_share.csv"}
        for kind, path in files.items():
            values = self.counts if kind == "count" else self.share
            rows = ["," + ",".join(layers)]
            rows += [
                n + "," + ",".join(str(int(v)) if kind == "count" else repr(float(v)) for v in row)
                for n, row in zip(self.names, values, strict=True)
            ]
            write_text_atomic(path, "\n".join(rows) + "\n")
        return files


def layer_distribution(sets: dict[str, NeuronSet]) -> LayerDistribution:
    ordered = _ordered(sets)
    counts = np.stack([s.per_layer().numpy() for s in ordered])
    return LayerDistribution(names=[s.name for s in ordered], counts=counts, d_mlp=ordered[0].d_mlp)
