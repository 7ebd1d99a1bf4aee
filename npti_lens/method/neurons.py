"""Neuron sets: the result of selection, one folder per trait pole, and the reference's format.

A folder holds `cfg.json` (model, dimensions, trait, pole, method, parameters, counts, version) and
`neurons.safetensors` with one row per neuron: layer, index, diff, p_active, q95, z, p, q
(NaN where a method or an imported file does not give them), plus `neurons.csv` for reading.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int64
from safetensors.torch import load_file, save_file
from torch import Tensor

from npti_lens.core.constants import CFG_FILE, NEURONS_CSV, NEURONS_FILE, POLES, TRAITS, VERSION, pole_name
from npti_lens.core.errors import UserError
from npti_lens.core.files import atomic_path, read_json, write_json_atomic, write_text_atomic

COLUMNS = ("layer", "index", "diff", "p_active", "q95", "z", "p", "q")
# The published Llama-3-8B-Instruct sets: the default dimensions of `import-npti`.
REFERENCE_MODEL = "Meta-Llama-3-8B-Instruct"
REFERENCE_N_LAYERS = 32
REFERENCE_D_MLP = 14336


@dataclass
class NeuronSet:
    """The neurons of one trait pole, sorted by diff descending."""

    trait: str
    pole: str
    model: str
    n_layers: int
    d_mlp: int
    layer: Int64[Tensor, " n"]
    index: Int64[Tensor, " n"]
    diff: Float[Tensor, " n"]
    p_active: Float[Tensor, " n"]
    q95: Float[Tensor, " n"]
    z: Float[Tensor, " n"] | None = None
    p: Float[Tensor, " n"] | None = None
    q: Float[Tensor, " n"] | None = None
    method: str = "npti"
    params: dict[str, Any] = field(default_factory=dict)
    # the protocol of the search behind the set: {"protocol": name, "protocol_hash": hash}
    provenance: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.layer.shape[0]
        nan = torch.full((n,), math.nan, dtype=torch.float64)
        self.z = nan.clone() if self.z is None else self.z
        self.p = nan.clone() if self.p is None else self.p
        self.q = nan.clone() if self.q is None else self.q
        for name in COLUMNS:
            if getattr(self, name).shape != (n,):
                raise UserError(
                    f"NeuronSet column {name} has shape {tuple(getattr(self, name).shape)}, expected ({n},)"
                )
        if n and (int(self.layer.min()) < 0 or int(self.layer.max()) >= self.n_layers):
            raise UserError(f"{self.name}: layer outside 0..{self.n_layers - 1}")
        if n and (int(self.index.min()) < 0 or int(self.index.max()) >= self.d_mlp):
            raise UserError(f"{self.name}: neuron index outside 0..{self.d_mlp - 1}")

    @property
    def name(self) -> str:
        return pole_name(self.trait, self.pole)

    def __len__(self) -> int:
        return int(self.layer.shape[0])

    def _take(self, idx: Tensor) -> NeuronSet:
        return dataclasses.replace(
            self, params=dict(self.params), **{c: getattr(self, c)[idx] for c in COLUMNS}
        )

    def top(self, k: int) -> NeuronSet:
        """The k neurons of largest diff (the set is stored sorted)."""
        order = torch.sort(self.diff, descending=True, stable=True).indices
        return self._take(order[:k])

    def in_layers(self, layers: list[int] | range) -> NeuronSet:
        keep = torch.isin(self.layer, torch.tensor(list(layers), dtype=torch.int64))
        return self._take(keep.nonzero().squeeze(-1))

    def flat(self) -> Int64[Tensor, " n"]:
        """Flat neuron ids layer * d_mlp + index (for set operations across sets)."""
        return self.layer * self.d_mlp + self.index

    @classmethod
    def from_flat(cls, flat: Int64[Tensor, " n"], like: NeuronSet, **columns: Any) -> NeuronSet:
        """A set of `like`'s model and pole at flat ids `flat` (layer * d_mlp + index); columns not
        given (diff, p_active, q95) are 0."""
        n = flat.shape[0]
        zeros = torch.zeros(n, dtype=torch.float64)
        cols = {"diff": zeros, "p_active": zeros.clone(), "q95": zeros.clone(), **columns}
        return dataclasses.replace(
            like, layer=flat // like.d_mlp, index=flat % like.d_mlp, z=None, p=None, q=None, params={}, **cols
        )

    def _check_same_model(self, other: NeuronSet) -> None:
        if (self.n_layers, self.d_mlp) != (other.n_layers, other.d_mlp):
            raise UserError(f"{self.name} and {other.name} are neuron sets of models of different shapes")

    def __and__(self, other: NeuronSet) -> NeuronSet:
        """The rows of this set whose neuron is in `other` too (this set's columns)."""
        self._check_same_model(other)
        return self._take(torch.isin(self.flat(), other.flat()).nonzero().squeeze(-1))

    def __or__(self, other: NeuronSet) -> NeuronSet:
        """This set's rows, then `other`'s rows of neurons this set lacks."""
        self._check_same_model(other)
        extra = other._take((~torch.isin(other.flat(), self.flat())).nonzero().squeeze(-1))
        merged = {c: torch.cat([getattr(self, c), getattr(extra, c)]) for c in COLUMNS}
        return dataclasses.replace(self, params=dict(self.params), **merged)

    def per_layer(self) -> Int64[Tensor, " n_layers"]:
        return torch.bincount(self.layer, minlength=self.n_layers)

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame({c: getattr(self, c).numpy() for c in COLUMNS})

    def cfg(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "pole": self.pole,
            "model": self.model,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "method": self.method,
            "params": self.params,
            **self.provenance,
            "n_neurons": len(self),
            "per_layer": self.per_layer().tolist(),
            "npti_lens_version": VERSION,
        }

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"layer": self.layer, "index": self.index}
        tensors.update({c: getattr(self, c).double() for c in COLUMNS[2:]})
        with atomic_path(folder / NEURONS_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for row in zip(*(getattr(self, c).tolist() for c in COLUMNS), strict=True):
            w.writerow(row)
        write_text_atomic(folder / NEURONS_CSV, buf.getvalue())
        write_json_atomic(folder / CFG_FILE, self.cfg())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> NeuronSet:
        folder = Path(folder)
        if not (folder / CFG_FILE).is_file() or not (folder / NEURONS_FILE).is_file():
            raise UserError(f"{folder}: not a neuron set (needs {CFG_FILE} and {NEURONS_FILE})")
        cfg = read_json(folder / CFG_FILE)
        damaged = f"{folder / NEURONS_FILE}: damaged neuron set"
        fix = "select it again (npti select) or restore the folder"
        try:
            t = load_file(str(folder / NEURONS_FILE))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise UserError(f"{damaged} ({str(e).splitlines()[0][:80]}); {fix}") from None
        missing = [c for c in COLUMNS if c not in t]
        if missing:
            raise UserError(f"{damaged} (missing columns {missing}); {fix}")
        for c in ("diff", "p_active", "q95"):
            if not bool(torch.isfinite(t[c]).all()):
                raise UserError(f"{damaged} (column {c} holds NaN or infinite values); {fix}")
        for k in ("trait", "pole", "model", "n_layers", "d_mlp"):
            if k not in cfg:
                raise UserError(f"{folder / CFG_FILE}: no {k!r}; {fix}")
        return cls(
            trait=cfg["trait"],
            pole=cfg["pole"],
            model=cfg["model"],
            n_layers=int(cfg["n_layers"]),
            d_mlp=int(cfg["d_mlp"]),
            method=cfg.get("method", "npti"),
            params=cfg.get("params", {}),
            provenance={k: cfg[k] for k in ("protocol", "protocol_hash") if k in cfg},
            **{c: t[c] for c in COLUMNS},
        )


def load_neuron_sets(folder: str | Path) -> dict[str, NeuronSet]:
    """All sets under NEURONS/ keyed by pole name (`Extraversion_high`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: neuron folder not found")
    sets = {}
    for trait in TRAITS:
        for pole in POLES:
            sub = folder / pole_name(trait, pole)
            if sub.is_dir():
                sets[pole_name(trait, pole)] = NeuronSet.load(sub)
    if not sets:
        raise UserError(f"{folder}: holds no neuron set (expected folders like Extraversion_high/)")
    return sets


def load_pole(folder: str | Path, trait: str, pole: str) -> NeuronSet:
    sub = Path(folder) / pole_name(trait, pole)
    if not sub.is_dir():
        raise UserError(f"{Path(folder)}: has no {pole_name(trait, pole)}/ neuron set")
    return NeuronSet.load(sub)


def import_reference(
    folder: str | Path,
    *,
    model: str = REFERENCE_MODEL,
    n_layers: int = REFERENCE_N_LAYERS,
    d_mlp: int = REFERENCE_D_MLP,
) -> dict[str, NeuronSet]:
    """Read the reference's `neuron_results` folder (`{Trait}[_reversed]_dict.json[.gz]`).

    Each file is a JSON object layer -> list of [layer, index, diff, p_active, q95]; parsed with
    `json` only. Traits whose files are missing are skipped; none at all is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found (expected the reference's neuron_results/)")
    sets = {}
    for trait in TRAITS:
        for pole, stem in (("high", f"{trait}_dict.json"), ("low", f"{trait}_reversed_dict.json")):
            path = next((folder / n for n in (stem, stem + ".gz") if (folder / n).is_file()), None)
            if path is None:
                continue
            data = read_json(path)
            rows = _reference_rows(path, data)
            rows.sort(key=lambda r: -r[2])  # stable: ties keep file order
            t = torch.tensor([r[:2] for r in rows], dtype=torch.int64).reshape(-1, 2)
            f = torch.tensor([r[2:5] for r in rows], dtype=torch.float64).reshape(-1, 3)
            sets[pole_name(trait, pole)] = NeuronSet(
                trait=trait,
                pole=pole,
                model=model,
                n_layers=n_layers,
                d_mlp=d_mlp,
                layer=t[:, 0],
                index=t[:, 1],
                diff=f[:, 0],
                p_active=f[:, 1],
                q95=f[:, 2],
                method="npti-reference",
                params={"source": path.name},
            )
    if not sets:
        raise UserError(f"{folder}: no {{Trait}}_dict.json or {{Trait}}_reversed_dict.json files")
    return sets


def _reference_rows(path: Path, data: Any) -> list[tuple[int, int, float, float, float]]:
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object layer -> list of neurons")
    rows = []
    for key, entries in data.items():
        if not isinstance(entries, list):
            raise UserError(f"{path}: layer {key!r} does not hold a list")
        for e in entries:
            if not (isinstance(e, list) and len(e) == 5 and all(isinstance(v, (int, float)) for v in e)):
                raise UserError(
                    f"{path}: layer {key!r}: entry {json.dumps(e)[:60]} is not "
                    "[layer, index, diff, p_active, q95]"
                )
            rows.append((int(e[0]), int(e[1]), float(e[2]), float(e[3]), float(e[4])))
    return rows
