"""Stage 6: induce a pole while the model runs, as a context manager over TransformerLens hooks.

Toward pole P, on every forward: for a random `keep_prob` share of P's neurons (a fresh draw per
forward and layer, shared across the batch) a += gamma * q95 * sigmoid(10 * (diff - 0.15)); for
every neuron of the opposite pole Q, a = min(a, 0). By default only at positions holding generated
tokens (the prompt is left alone, as in the published method); `positions="all"` edits every position.

The released code's rules are the defaults: each target neuron kept with probability `keep_prob`
(`keep="bernoulli"`), and Q clamped before the shift, only in layers that hold target neurons
(`clamp_order="before"`, `clamp_layers="targets"`). npti_lens 0.1 shifted exactly
floor(keep_prob * n) neurons (`keep="exact"`) and clamped after the shift in every layer
(`"after"`, `"all"`); the protocol (`npti_lens.method.protocol`) says which a run uses.

For gated MLPs the edit is written into hook_post as a' * up with a = act_fn(hook_pre) and up from
hook_pre_linear of the same forward (exactly what editing act(gate) in the HF module gives); for
non-gated MLPs hook_post is a itself. Several traits can be induced at once; where sets overlap,
shifts add up, and the clamp of an opposite pole comes first or last as `clamp_order` says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from npti_lens.core.errors import UserError
from npti_lens.method.neurons import NeuronSet
from npti_lens.model.generation import any_generated, generated_positions
from npti_lens.model.load import Model, model_device, model_dims, model_id, same_model_key
from npti_lens.model.sites import MLPSites, hooks_added, mlp_sites

POSITIONS = ("generated", "all")
GAMMA_WARN = 20.0  # |gamma| above this draws a warning (the paper sweeps 0.6-1.5, the demo goes to 5)
SEED_MAX = 2**32 - 1  # keep-draw seeds: (seed, position, layer, neuron) are hashed in int64
KEEP_RULES = ("bernoulli", "exact")
CLAMP_ORDERS = ("before", "after")
CLAMP_LAYERS = ("targets", "all")


@dataclass
class InduceConfig:
    gamma: float = field(default=1.0, metadata={"help": "shift strength (the paper sweeps 0.6-1.5)"})
    keep_prob: float = field(
        default=0.9, metadata={"help": "share of the target neurons shifted on each forward"}
    )
    keep: str = field(
        default="bernoulli",
        metadata={"help": "bernoulli: each target neuron kept with keep_prob; exact: floor(keep_prob * n)"},
    )
    clamp_order: str = field(
        default="before", metadata={"help": "clamp the opposite pole before or after the shift"}
    )
    clamp_layers: str = field(
        default="targets", metadata={"help": "clamp in layers holding target neurons only, or in all"}
    )
    positions: str = field(
        default="generated", metadata={"help": "edit generated-token positions only, or all"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random neuron masks"})
    activate: bool = field(default=True, metadata={"help": "shift the target pole's neurons up"})
    deactivate: bool = field(default=True, metadata={"help": "clamp the opposite pole's neurons at 0"})


def shift_sizes(neurons: NeuronSet, gamma: float) -> Tensor:
    """Per-neuron shift gamma * q95 * sigmoid(10 * (diff - 0.15)), float64."""
    return gamma * neurons.q95.double() * torch.sigmoid(10.0 * (neurons.diff.double() - 0.15))


def check_fits(
    model: Model,
    neurons: NeuronSet,
    *,
    allow_other_model: bool = False,
    sites: MLPSites | None = None,
) -> None:
    """Refuse a neuron set made for other dimensions (or, unless allowed, another model)."""
    n_layers, d_mlp = (sites.n_layers, sites.d_mlp) if sites is not None else model_dims(model)
    if (neurons.n_layers, neurons.d_mlp) != (n_layers, d_mlp):
        raise UserError(
            f"neuron set {neurons.name} is for {neurons.model} ({neurons.n_layers} layers x "
            f"{neurons.d_mlp} neurons) but the model has {n_layers} x {d_mlp}; "
            "select neurons for this model first"
        )
    if same_model_key(neurons.model).lower() != model_id(model).lower() and not allow_other_model:
        raise UserError(
            f"neuron set {neurons.name} was selected on {neurons.model!r}, not {model_id(model)!r}; "
            "pass --allow-other-model to apply it anyway"
        )


def check_config(cfg: InduceConfig, stacklevel: int = 2) -> None:
    """Refuse a setting outside its choices or a non-finite gamma; warn on a gamma far out of range."""
    if cfg.positions not in POSITIONS:
        raise UserError(f"{cfg.positions!r} is not one of {', '.join(POSITIONS)}", field="positions")
    if not 0.0 <= cfg.keep_prob <= 1.0:
        raise UserError(f"{cfg.keep_prob} is not between 0 and 1", field="keep_prob")
    for name, value, allowed in (
        ("keep", cfg.keep, KEEP_RULES),
        ("clamp_order", cfg.clamp_order, CLAMP_ORDERS),
        ("clamp_layers", cfg.clamp_layers, CLAMP_LAYERS),
    ):
        if value not in allowed:
            raise UserError(f"{value!r} is not one of {', '.join(allowed)}", field=name)
    if isinstance(cfg.seed, bool) or not hasattr(cfg.seed, "__index__") or not 0 <= cfg.seed <= SEED_MAX:
        raise UserError(f"{cfg.seed!r} is not an integer between 0 and {SEED_MAX}", field="seed")
    if not math.isfinite(cfg.gamma):
        raise UserError(f"{cfg.gamma} is not a finite number", field="gamma")
    if not -GAMMA_WARN <= cfg.gamma <= GAMMA_WARN:
        warnings.warn(
            f"gamma {cfg.gamma:g} is far outside the paper's 0.6-1.5: expect broken text (and an error "
            "if activations overflow)",
            stacklevel=stacklevel,
        )


def shifted(a: Tensor, plan: LayerPlan, keep: Tensor, clamp_order: str) -> Tensor:
    """The edited activations of `plan.idx`: the opposite pole clamped at 0 (before or after) and the
    kept targets shifted. `keep` is per neuron, or per row and neuron (shape of `a`)."""
    if clamp_order == "before":
        a = torch.where(plan.clamp, a.clamp(max=0), a)
    a = a + plan.delta * keep
    if clamp_order == "after":
        a = torch.where(plan.clamp, a.clamp(max=0), a)
    return a


_M1, _M2, _GOLDEN = -4658895280553007687, -7723592293110705685, -7046029254386353131  # splitmix64, signed


def _mix64(x: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 (multiplications wrap; shifts made logical by masking)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _M1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _M2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def counter_uniform(seed: int, position: Tensor, layer: int, neuron: Tensor) -> Tensor:
    """Uniform [0, 1) float32 draws, one per (position row, neuron), from a hash of (seed, position,
    layer, neuron): the same numbers whatever else shares the batch (the vLLM engine's keep draws)."""
    base = _mix64(torch.tensor(seed * 1_000_003 + layer, dtype=torch.int64))
    x = _mix64(base + position.long()[:, None] * _GOLDEN)
    x = _mix64(x + neuron.long()[None, :] * _GOLDEN)
    return ((x >> 40) & ((1 << 24) - 1)).float() / float(1 << 24)


@dataclass
class LayerPlan:
    idx: Tensor  # sorted union of edited neuron indices
    delta: Tensor  # shift per idx (0 where not a target neuron), model dtype
    is_target: Tensor  # bool per idx
    clamp: Tensor  # bool per idx: opposite-pole neuron, a = min(a, 0)
    n_target: int
    n_keep: int


@dataclass
class InductionHandle:
    """What an active induction did: forwards seen per layer, neurons edited."""

    cfg: InduceConfig
    layers: list[int]
    n_target: int
    n_clamped: int
    fired: dict[int, int] = field(default_factory=dict)
    edited_forwards: int = 0
    # per layer: a tensor flag (no device sync per forward) set when an edit gave a non-finite value
    nonfinite: dict[int, Tensor] = field(default_factory=dict)


def plan_layers(
    n_layers: int,
    d_mlp: int,
    pairs: Sequence[tuple[NeuronSet, NeuronSet | None]],
    cfg: InduceConfig,
    device: torch.device | str,
    dtype: torch.dtype,
) -> dict[int, LayerPlan]:
    """Per layer with edits: the neurons edited, their shifts, which are targets and which clamped."""
    n_neurons = n_layers * d_mlp
    delta = torch.zeros(n_neurons, dtype=torch.float64)
    target = torch.zeros(n_neurons, dtype=torch.bool)
    clamp = torch.zeros(n_neurons, dtype=torch.bool)
    for tgt, opp in pairs:
        if cfg.activate:
            delta.index_add_(0, tgt.flat(), shift_sizes(tgt, cfg.gamma))
            target[tgt.flat()] = True
        if opp is not None and cfg.deactivate:
            clamp[opp.flat()] = True
    plans = {}
    for layer in range(n_layers):
        sl = slice(layer * d_mlp, (layer + 1) * d_mlp)
        n_t = int(target[sl].sum())
        if n_t == 0 and cfg.clamp_layers == "targets":
            continue  # the released code clamps only where it also shifts
        idx = (target[sl] | clamp[sl]).nonzero().squeeze(-1)
        if idx.numel() == 0:
            continue
        plans[layer] = LayerPlan(
            idx=idx.to(device),
            delta=delta[sl][idx].to(device=device, dtype=dtype),
            is_target=target[sl][idx].to(device),
            clamp=clamp[sl][idx].to(device),
            n_target=n_t,
            n_keep=math.floor(cfg.keep_prob * n_t + 1e-9),
        )
    return plans


@contextlib.contextmanager
def induce(
    model: TransformerBridge,
    pairs: Sequence[tuple[NeuronSet, NeuronSet | None]],
    cfg: InduceConfig | None = None,
    *,
    allow_other_model: bool = False,
) -> Iterator[InductionHandle]:
    """Induce each (target pole set, opposite pole set or None) pair while the block runs.

    Only the hooks added here are removed on exit, also on an exception. A hook that never fired
    by the end of a block that ran without error raises.
    """
    cfg = cfg or InduceConfig()
    check_config(cfg, stacklevel=4)
    sites = mlp_sites(model)
    for tgt, opp in pairs:
        for s in (tgt, opp):
            if s is not None:
                check_fits(model, s, allow_other_model=allow_other_model, sites=sites)
    device = model_device(model)
    dtype = next(model.original_model.parameters()).dtype
    plans = plan_layers(sites.n_layers, sites.d_mlp, pairs, cfg, device, dtype)
    handle = InductionHandle(
        cfg=cfg,
        layers=sorted(plans),
        n_target=sum(p.n_target for p in plans.values()),
        n_clamped=sum(int(p.clamp.sum()) for p in plans.values()),
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed)

    def position_mask(shape: torch.Size) -> Tensor | None:
        if cfg.positions == "all":
            return None
        mask = generated_positions()
        if mask is None:
            raise UserError(
                "induction with positions='generated' ran outside npti_lens.model.generation; "
                "use positions='all' or wrap the forward in positions_context(mask)"
            )
        if tuple(mask.shape) != tuple(shape[:2]):
            raise RuntimeError(f"position mask {tuple(mask.shape)} does not match activations {tuple(shape)}")
        return mask

    def edit(layer: int, plan: LayerPlan, post: Tensor, a: Tensor, up: Tensor | None) -> Tensor:
        handle.fired[layer] = handle.fired.get(layer, 0) + 1
        pos = position_mask(post.shape)
        if pos is not None and not any_generated():
            return post
        keep = plan.is_target
        if cfg.keep == "bernoulli" and cfg.keep_prob < 1.0:
            # as released: torch.rand(n) <= p per target neuron, new per forward and layer
            keep = keep & (torch.rand(plan.idx.shape[0], generator=gen, device=device) <= cfg.keep_prob)
        elif cfg.keep == "exact" and plan.n_keep < plan.n_target:
            scores = torch.rand(plan.idx.shape[0], generator=gen, device=device)
            scores = scores.masked_fill(~plan.is_target, 2.0)
            keep = torch.zeros_like(keep)
            keep[scores.argsort()[: plan.n_keep]] = True
        a = shifted(a, plan, keep, cfg.clamp_order)
        new = a * up if up is not None else a
        if pos is not None:
            new = torch.where(pos[..., None], new, post[..., plan.idx])
        handle.edited_forwards += 1
        new = new.to(post.dtype)
        bad = ~torch.isfinite(new).all()
        handle.nonfinite[layer] = handle.nonfinite[layer] | bad if layer in handle.nonfinite else bad
        return post.index_copy(-1, plan.idx, new)

    def gated_hooks(layer: int, plan: LayerPlan) -> list[tuple[str, Any]]:
        stash: dict[str, Tensor] = {}
        act_fn = sites.act_fns[layer]

        def on_pre(x: Tensor, hook: Any) -> None:
            stash["a"] = act_fn(x[..., plan.idx])

        def on_up(x: Tensor, hook: Any) -> None:
            stash["up"] = x[..., plan.idx]

        def on_post(x: Tensor, hook: Any) -> Tensor:
            if "a" not in stash or "up" not in stash:
                raise RuntimeError(f"layer {layer}: hook_post fired before hook_pre/hook_pre_linear")
            a, up = stash.pop("a"), stash.pop("up")
            return edit(layer, plan, x, a, up)

        return [(sites.pre(layer), on_pre), (sites.up(layer), on_up), (sites.post(layer), on_post)]

    def plain_hooks(layer: int, plan: LayerPlan) -> list[tuple[str, Any]]:
        def on_post(x: Tensor, hook: Any) -> Tensor:
            return edit(layer, plan, x, x[..., plan.idx], None)

        return [(sites.post(layer), on_post)]

    hooks = []
    for layer, plan in plans.items():
        hooks += (gated_hooks if sites.gated else plain_hooks)(layer, plan)
    with hooks_added(model, hooks):
        yield handle
    broken = [layer for layer, flag in handle.nonfinite.items() if bool(flag)]
    if broken:
        raise UserError(
            f"the induction made activations infinite or NaN in layers {broken} (gamma {cfg.gamma:g}); "
            "its outputs are meaningless: lower --gamma"
        )
    silent = [layer for layer in plans if handle.fired.get(layer, 0) == 0]
    if silent:
        raise RuntimeError(f"induction hooks of layers {silent} never fired: no forward ran through them")


def load_pair(neuron_dir: str | Path, trait: str, pole: str) -> tuple[NeuronSet, NeuronSet]:
    """The set of `pole` and of its opposite from a NEURONS folder."""
    from npti_lens.core.constants import opposite
    from npti_lens.method.neurons import load_pole

    return load_pole(neuron_dir, trait, pole), load_pole(neuron_dir, trait, opposite(pole))


def random_control(neurons: NeuronSet, *, seed: int, exclude: Tensor | None = None) -> NeuronSet:
    """Random neurons matched to `neurons` per layer in count and in shift size (same diff and q95).

    `exclude` (flat ids) are never drawn, e.g. the union of all selected neurons.
    """
    gen = torch.Generator().manual_seed(seed)
    banned = torch.zeros(neurons.n_layers * neurons.d_mlp, dtype=torch.bool)
    if exclude is not None:
        banned[exclude] = True
    index = neurons.index.clone()
    for layer in neurons.layer.unique().tolist():
        rows = (neurons.layer == layer).nonzero().squeeze(-1)
        free = (~banned[layer * neurons.d_mlp : (layer + 1) * neurons.d_mlp]).nonzero().squeeze(-1)
        if free.numel() < rows.numel():
            raise UserError(f"layer {layer}: only {free.numel()} neurons left to draw {rows.numel()} from")
        index[rows] = free[torch.randperm(free.numel(), generator=gen)[: rows.numel()]]
    # Same rows (layer, diff, q95: the same shifts) at other indices; the tests' z, p, q do not apply.
    return dataclasses.replace(
        neurons,
        index=index,
        z=None,
        p=None,
        q=None,
        method="random-control",
        params={"matched_to": neurons.name, "seed": seed},
    )
