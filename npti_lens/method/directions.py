"""The field's direction baseline: a steering vector per layer in the residual stream.

For a pole P against its opposite Q, the vector of layer l is the mean of block l's output over the
answer tokens of P's persona answers minus that mean over Q's (contrastive activation addition /
mean difference; repeng and steering-vectors use the same sign, target minus opposite, and index a
layer by the output of block l). npti_lens reads both means from the same search run that gives
the neuron statistics (`Stats.resid_sum`), so the vector and the neurons come from the same tokens.
`steer()` adds `coef * vector[l]` to block l's output at generated positions (like an induction),
on all layers or the ones chosen. Where we differ from those packages: they usually steer one or a
few middle layers with a tuned coefficient and read the last prompt token or use PCA (repeng); here
every layer's mean difference is kept and the layers to steer are a parameter.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from npti_lens.core.constants import pole_name
from npti_lens.core.errors import UserError
from npti_lens.core.files import atomic_path
from npti_lens.method import cvector
from npti_lens.method.induction import shift_sizes
from npti_lens.method.neurons import NeuronSet
from npti_lens.method.stats import Stats
from npti_lens.model.generation import any_generated, generated_positions
from npti_lens.model.load import model_device, model_id, same_model_key
from npti_lens.model.sites import hooks_added, mlp_sites, resid_site

DIRECTION_FILE = "direction.safetensors"


@dataclass
class Direction:
    """One pole's mean-difference vector per layer (target minus opposite)."""

    trait: str
    pole: str
    model: str
    vectors: Float[Tensor, "n_layers d_model"]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return pole_name(self.trait, self.pole)

    @property
    def n_layers(self) -> int:
        return int(self.vectors.shape[0])

    def norms(self) -> Float[Tensor, " n_layers"]:
        return self.vectors.norm(dim=-1)

    def save(self, folder: str | Path) -> Path:
        """`folder/direction.safetensors`, its fields in the header (written atomically)."""
        path = Path(folder) / DIRECTION_FILE
        header = {
            "trait": self.trait,
            "pole": self.pole,
            "model": self.model,
            "provenance": json.dumps(self.provenance),
        }
        with atomic_path(path) as tmp:
            save_file({"vectors": self.vectors.contiguous().cpu()}, str(tmp), metadata=header)
        return path

    def to_gguf(self, path: str | Path, *, scale: float = 1.0, layers: Sequence[int] | None = None,
                model_hint: str | None = None) -> Path:  # fmt: skip
        """This direction as a llama.cpp control vector (`--control-vector FILE.gguf`): `scale` times
        block N's vector as `direction.N`, for `layers` (default: every block but 0, which llama.cpp
        cannot steer; naming 0 is an error). See `npti_lens.method.cvector`."""
        meta = {"trait": self.trait, "pole": self.pole, "model": self.model}
        return cvector.write(path, self.vectors, meta, scale=scale, layers=layers, model_hint=model_hint)

    @classmethod
    def from_gguf(
        cls, path: str | Path, *, n_layers: int, d_model: int, model: str | None = None
    ) -> Direction:
        """A llama.cpp control vector (ours, repeng's, `cvector-generator`'s) as a direction of
        `n_layers x d_model`, zero on the blocks it does not hold; `provenance["layers"]` lists the
        blocks it holds: `steer(m, d, 1.0, layers=d.provenance["layers"], positions="all")` does what
        `--control-vector` does. `model` names the model of a file that does not (others' files)."""
        vectors, held, meta = cvector.read(path, n_layers=n_layers, d_model=d_model)
        made_on = meta.get("model") or model or "unknown"
        return cls(meta.get("trait", "?"), meta.get("pole", "?"), made_on, vectors,
                   {"control_vector": str(path), "layers": held})  # fmt: skip

    @classmethod
    def load(cls, folder: str | Path) -> Direction:
        path = Path(folder) / DIRECTION_FILE
        if not path.is_file():
            raise UserError(
                f"{path}: no direction here; search again with this version (it records the residual stream) and select"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                header, vectors = f.metadata() or {}, f.get_tensor("vectors")
            out = cls(
                header["trait"], header["pole"], header["model"], vectors, json.loads(header["provenance"])
            )
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise UserError(f"{path}: damaged direction file ({str(e).splitlines()[0][:80]})") from None
        if out.vectors.dim() != 2 or not bool(torch.isfinite(out.vectors).all()):
            raise UserError(f"{path}: damaged direction file (vectors are not finite n_layers x d_model)")
        return out


def mean_difference(stats_p: Stats, stats_q: Stats, *, trait: str, pole: str, model: str) -> Direction:
    """Pole P's mean block output at answer tokens minus the opposite pole's, per layer."""
    if stats_p.resid_sum is None or stats_q.resid_sum is None:
        raise UserError(
            f"{trait}: the search run has no residual sums (made by an earlier version); search again"
        )
    if stats_p.n_tokens == 0 or stats_q.n_tokens == 0:
        raise UserError(f"{trait}: a pole has no recorded answer tokens; run search first")
    vectors = stats_p.resid_sum / stats_p.n_tokens - stats_q.resid_sum / stats_q.n_tokens
    keys = ("protocol", "protocol_hash")
    return Direction(
        trait, pole, model, vectors.float(), {k: stats_p.meta[k] for k in keys if k in stats_p.meta}
    )


def random_direction(direction: Direction, *, seed: int) -> Direction:
    """A control: a random Gaussian direction per layer with the same norm as `direction`'s."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(direction.vectors.shape, generator=gen, dtype=torch.float64)
    scaled = noise / noise.norm(dim=-1, keepdim=True) * direction.norms().double()[:, None]
    return replace(
        direction, vectors=scaled.float(), provenance={"random_control_of": direction.name, "seed": seed}
    )


def npti_as_vector(
    model: TransformerBridge, neurons: NeuronSet, gamma: float, up_mean: Tensor | None = None
) -> Direction:
    """NPTI's shift of `neurons` written as a residual-stream vector per layer: sum_i shift_i W_out[i].

    For a non-gated MLP (GPT-2) this is exact: shifting neuron i by shift_i adds shift_i * W_out[i]
    to the MLP's output, hence to the block's output, whatever the input (all neurons kept, no
    clamp). For a gated MLP the shifted neuron is multiplied by up(x) before W_out, so the shift
    depends on the input; with `up_mean` (n_layers x d_mlp, e.g. `Stats.up_sum / n_tokens` of a
    search) the vector uses up(x)'s mean instead, an approximation.
    """
    gated = mlp_sites(model).gated
    if gated and up_mean is None:
        raise UserError("npti_as_vector: a gated MLP scales each shift by up(x); pass up_mean (its mean)")
    w_out = model.W_out.detach().double()  # n_layers d_mlp d_model
    vectors = torch.zeros((w_out.shape[0], w_out.shape[2]), dtype=torch.float64)
    shifts = shift_sizes(neurons, gamma)
    if gated and up_mean is not None:
        shifts = shifts * up_mean.double().cpu()[neurons.layer, neurons.index]
    for layer, index, shift in zip(
        neurons.layer.tolist(), neurons.index.tolist(), shifts.tolist(), strict=True
    ):
        vectors[layer] += shift * w_out[layer, index].cpu()
    return Direction(neurons.trait, neurons.pole, neurons.model, vectors.float(), {"npti_gamma": gamma})


@dataclass
class SteerHandle:
    layers: list[int]
    fired: dict[int, int] = field(default_factory=dict)


@contextlib.contextmanager
def steer(
    model: TransformerBridge,
    direction: Direction,
    coef: float,
    layers: Sequence[int] | None = None,
    *,
    positions: str = "generated",
    allow_other_model: bool = False,
) -> Iterator[SteerHandle]:
    """Add `coef * direction.vectors[l]` to block l's output (all layers, or `layers`) while the block
    runs, at generated-token positions (or every position with `positions="all"`); hooks removed on exit."""
    n_layers = int(model.cfg.n_layers)
    if direction.vectors.shape != (n_layers, int(model.cfg.d_model)):
        raise UserError(
            f"direction {direction.name} is {tuple(direction.vectors.shape)} but the model has "
            f"{n_layers} layers x {model.cfg.d_model}; select it on this model"
        )
    if same_model_key(direction.model).lower() != model_id(model).lower() and not allow_other_model:
        raise UserError(
            f"direction {direction.name} was made on {direction.model!r}, not {model_id(model)!r}"
        )
    if positions not in ("generated", "all"):
        raise UserError(f"{positions!r} is not generated or all", field="positions")
    chosen = list(range(n_layers)) if layers is None else sorted(set(layers))
    if not chosen or chosen[0] < 0 or chosen[-1] >= n_layers:
        raise UserError(f"layers {chosen} are not among 0..{n_layers - 1}", field="layers")
    dtype = next(model.original_model.parameters()).dtype
    add = (float(coef) * direction.vectors).to(device=model_device(model), dtype=dtype)
    handle = SteerHandle(layers=chosen)

    def make(layer: int):  # noqa: ANN202 - closure over the layer
        def hook(x: Tensor, hook: Any) -> Tensor:
            handle.fired[layer] = handle.fired.get(layer, 0) + 1
            if positions == "all":
                return x + add[layer]
            mask = generated_positions()
            if mask is None:
                raise UserError(
                    "steering with positions='generated' ran outside npti_lens.model.generation; use positions='all'"
                )
            if not any_generated():
                return x
            return x + mask[..., None].to(x.dtype) * add[layer]

        return hook

    with hooks_added(model, [(resid_site(layer), make(layer)) for layer in chosen]):
        yield handle
    silent = [layer for layer in chosen if not handle.fired.get(layer)]
    if silent:
        raise RuntimeError(f"steering hooks of layers {silent} never fired: no forward ran through them")
