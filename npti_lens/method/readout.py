"""Reading a pole from the model while it runs: two readouts per position, from hooks.

- **npti**: the share of the pole's selected neurons that are active (a > 0, the search's own
  definition of active, with a read before any edit as in `record`) minus that share for the
  opposite pole's neurons. In [-1, 1]; a pole's readout is minus its opposite's.
- **vector**: the scalar projection of block l's output on the pole's direction at l (the
  mean-difference vector of `directions`, made a unit vector), averaged over the chosen layers;
  persona_vectors reads its persona vector the same way (one layer).

`monitor()` is a context manager around any forwards: generation with the KV cache (the prefill
starts a segment, each one-token step adds a position to it), or teacher forcing (one forward, one
segment). A trace's positions are the forward's, padding included; `monitor_rows` in
`npti_lens.workflows.monitoring` turns them into per-answer numbers. A readout of NPTI's own neurons while NPTI
induces them sees the edit, not the text (and the vector readout, on answers steered by the same
vector): read un-induced answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from npti_lens.core.constants import opposite, pole_name
from npti_lens.core.errors import UserError
from npti_lens.method.directions import Direction
from npti_lens.method.induction import check_fits
from npti_lens.method.neurons import NeuronSet
from npti_lens.model.load import Model, is_engine, model_device, model_id, same_model_key
from npti_lens.model.sites import hooks_added, mlp_sites, resid_site


@dataclass(frozen=True)
class Readout:
    """What a monitor reads: a pole's neurons against its opposite's, and the pole's direction at
    `layers` (none: no vector readout)."""

    neurons: NeuronSet
    opposite: NeuronSet
    direction: Direction | None = None
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n, o = self.neurons, self.opposite
        if (n.trait, opposite(n.pole)) != (o.trait, o.pole):
            raise UserError(f"{o.name} is not the opposite pole of {n.name}")
        if (n.n_layers, n.d_mlp) != (o.n_layers, o.d_mlp) or same_model_key(n.model) != same_model_key(
            o.model
        ):
            raise UserError(f"{n.name} and {o.name} are neuron sets of different models")
        if not len(n) or not len(o):
            raise UserError(f"{(n if not len(n) else o).name}: an empty neuron set has no readout")
        d = self.direction
        if d is not None:
            if (d.trait, d.pole) != (n.trait, n.pole):
                raise UserError(f"direction {d.name} is not the direction of {n.name}")
            if same_model_key(d.model) != same_model_key(n.model):
                raise UserError(f"direction {d.name} was made on {d.model!r}, the neurons on {n.model!r}")
            if not self.layers or min(self.layers) < 0 or max(self.layers) >= d.n_layers:
                raise UserError(
                    f"layers {list(self.layers)} are not among 0..{d.n_layers - 1}", field="layer"
                )

    @property
    def name(self) -> str:
        return self.neurons.name

    def describe(self) -> dict[str, Any]:
        """The readout as JSON (for cfg.json)."""
        return {"trait": self.neurons.trait, "pole": self.neurons.pole, "model": self.neurons.model,
                "n_neurons": len(self.neurons), "n_opposite": len(self.opposite),
                "vector_layers": list(self.layers) if self.direction is not None else None}  # fmt: skip


@dataclass
class Trace:
    """What `monitor()` read: per segment (a prefill and its decoding steps, or one teacher-forced
    forward) the npti readout `batch x pos` and the vector readout per chosen layer
    `batch x pos x layers`, on the CPU once the context has exited."""

    readout: Readout
    segments: list[dict[str, Any]] = field(default_factory=list)
    forwards: int = 0

    def _one(self) -> dict[str, Tensor]:
        if len(self.segments) != 1:
            raise ValueError(
                f"the trace holds {len(self.segments)} segments (one per batch or forward); "
                "read trace.segments or trace.to_frame()"
            )
        return _joined(self.segments[0])

    @property
    def npti(self) -> Float[Tensor, "batch pos"]:
        """The npti readout of the one segment (one forward, or one generated batch)."""
        return self._one()["npti"]

    @property
    def vector_by_layer(self) -> Float[Tensor, "batch pos layers"]:
        """The vector readout of the one segment at each chosen block (NaN without a direction)."""
        return self._one()["vector_by_layer"]

    @property
    def vector(self) -> Float[Tensor, "batch pos"]:
        """The vector readout of the one segment, mean over the chosen layers (NaN without a direction)."""
        return self._one()["vector_by_layer"].mean(-1)

    def to_frame(self) -> Any:
        """A long pandas DataFrame: segment, row, position, npti, vector."""
        import pandas as pd

        parts = []
        for s, seg in enumerate(self.segments):
            t = _joined(seg)
            b, p = t["npti"].shape
            parts.append(pd.DataFrame({
                "segment": s, "row": torch.arange(b).repeat_interleave(p).numpy(),
                "position": torch.arange(p).repeat(b).numpy(), "npti": t["npti"].flatten().numpy(),
                "vector": t["vector_by_layer"].mean(-1).flatten().numpy()}))  # fmt: skip
        cols = ["segment", "row", "position", "npti", "vector"]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def _joined(seg: dict[str, Any]) -> dict[str, Tensor]:
    return {k: torch.cat(v, dim=1) for k, v in seg.items()}


@contextlib.contextmanager
def monitor(
    model: Model,
    neurons: NeuronSet | Readout | dict[str, NeuronSet],
    pole: str | None = None,
    *,
    opposite_set: NeuronSet | None = None,
    direction: Direction | None = None,
    layers: Sequence[int] | None = None,
    allow_other_model: bool = False,
) -> Iterator[Trace]:
    """Read `neurons`' pole (and `direction` at `layers`) at every position of every forward inside.

    `neurons`: a `Readout`; the pole's `NeuronSet` with `opposite_set`; or `load_neuron_sets`'
    sets with `pole` naming one (`"Extraversion_high"`), its opposite found among them. Hooks are
    removed on exit; a forward that skipped a hooked layer is an error. A forward of one position
    continues the segment before it (a decoding step with the KV cache).
    """
    if is_engine(model):
        raise UserError("monitor reads TransformerLens hooks: answer on the engine, then monitor the "
                        "answers file (npti monitor, monitor_rows) on the TL model")  # fmt: skip
    readout = _as_readout(neurons, pole, opposite_set, direction, layers)
    for s in (readout.neurons, readout.opposite):
        check_fits(model, s, allow_other_model=allow_other_model)
    d = readout.direction
    if d is not None and d.vectors.shape != (int(model.cfg.n_layers), int(model.cfg.d_model)):
        raise UserError(f"direction {d.name} does not fit {model_id(model)}; select it on this model")
    sites = mlp_sites(model)
    device = model_device(model)
    trace = Trace(readout)
    idx = {}  # layer -> (pole's indices, opposite's indices) on the device
    for which, s in enumerate((readout.neurons, readout.opposite)):
        for layer in s.layer.unique().tolist():
            pair = idx.setdefault(layer, [None, None])
            pair[which] = s.index[s.layer == layer].to(device)
    sizes = (float(len(readout.neurons)), float(len(readout.opposite)))
    units = {}
    if readout.direction is not None:
        v = readout.direction.vectors.float()
        units = {layer: (v[layer] / v[layer].norm().clamp_min(1e-12)).to(device) for layer in readout.layers}
    state: dict[str, Any] = {"npti": None, "vec": None, "fired": {}}

    def begin(shape: torch.Size) -> None:
        b, p = int(shape[0]), int(shape[1])
        state["npti"] = torch.zeros((b, p), device=device)
        state["vec"] = torch.full((b, p, max(len(units), 1)), torch.nan, device=device)
        seg = trace.segments[-1] if trace.segments else None
        if seg is None or p != 1 or seg["npti"][-1].shape[0] != b:
            seg = {"npti": [], "vector_by_layer": []}
            trace.segments.append(seg)
        seg["npti"].append(state["npti"])
        seg["vector_by_layer"].append(state["vec"])
        trace.forwards += 1

    def pre_hook(layer: int):  # noqa: ANN202 - closure over the layer
        act_fn = sites.act_fns[layer]

        def hook(pre: Tensor, hook: Any) -> None:
            if layer == 0:
                begin(pre.shape)
            state["fired"][("pre", layer)] = state["fired"].get(("pre", layer), 0) + 1
            for which, ix in enumerate(idx.get(layer, (None, None))):
                if ix is not None:
                    # .to: a no-op unless the model's layers sit on several devices
                    a = act_fn(pre.index_select(-1, ix.to(pre.device)))
                    active = ((a > 0).sum(-1).float() / sizes[which]).to(device)
                    state["npti"] += active if which == 0 else -active

        return hook

    def resid_hook(k: int, layer: int):  # noqa: ANN202 - closure over the layer
        def hook(x: Tensor, hook: Any) -> None:
            state["fired"][("resid", layer)] = state["fired"].get(("resid", layer), 0) + 1
            state["vec"][..., k] = (x.float() @ units[layer].to(x.device)).to(device)

        return hook

    hooks = [(sites.pre(layer), pre_hook(layer)) for layer in sorted(set(idx) | {0})]
    hooks += [(resid_site(layer), resid_hook(k, layer)) for k, layer in enumerate(units)]
    try:
        with hooks_added(model, hooks):
            yield trace
    finally:
        for seg in trace.segments:
            for key in seg:
                seg[key] = [t.cpu() for t in seg[key]]
    short = sorted({name for name, n in state["fired"].items() if n != trace.forwards})
    if short or not trace.forwards:
        raise RuntimeError(f"monitor: hooks {short or 'all'} did not fire on every forward")


def _as_readout(
    neurons: NeuronSet | Readout | dict[str, NeuronSet],
    pole: str | None,
    opposite_set: NeuronSet | None,
    direction: Direction | None,
    layers: Sequence[int] | None,
) -> Readout:
    if isinstance(neurons, Readout):
        return neurons
    if isinstance(neurons, dict):  # load_neuron_sets' sets by pole name, or sets by pole
        if pole not in neurons:
            raise UserError(f"the sets given hold {sorted(neurons)}, not {pole!r}")
        target = neurons[pole]
        keys = (pole_name(target.trait, opposite(target.pole)), opposite(target.pole))
        other = next((neurons[k] for k in keys if k in neurons), None)
        if other is None:
            raise UserError(f"the sets given lack {keys[0]}, the opposite pole monitor reads against")
        neurons, opposite_set, pole = target, other, target.pole
    if pole is not None and neurons.pole != pole:
        raise UserError(f"the set given is {neurons.name}, not the {pole} pole")
    if opposite_set is None:
        raise UserError(
            f"monitor {neurons.name}: pass opposite_set (the {opposite(neurons.pole)} pole's set)"
        )
    chosen = tuple(layers) if layers is not None else ()
    if direction is not None and not chosen:
        raise UserError("monitor: a direction needs the layers to read it at (layers=...)")
    return Readout(neurons, opposite_set, direction, chosen)
