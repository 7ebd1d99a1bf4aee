"""Stage 5: select the neurons of a pole P against its opposite Q from their statistics.

`npti` is the published rule: diff = P_active(P) - P_active(Q), all neurons sorted by diff
descending (ties in layer-major order), keep max(min_neurons, #{diff >= threshold}).
`fdr` keeps the neurons a one-sided two-proportion z-test finds more often active under P, at a
Benjamini-Hochberg false discovery rate alpha, with at least `min_diff` difference.
Both report z, p and q for every kept neuron, and q95: the lower edge of the first histogram bin
under P at which the cumulative count reaches 95% (0.0 where that is bin 0, a <= 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from scipy.special import ndtr
from torch import Tensor

from npti_lens.core.constants import POLES, TRAITS, opposite, pole_name
from npti_lens.core.errors import UserError
from npti_lens.method.neurons import NeuronSet
from npti_lens.method.stats import Stats, bin_lower_edges, load_run_stats, stats_path

QUANTILE = 0.95


@dataclass
class SelectConfig:
    method: str = field(default="npti", metadata={"help": "selection rule: npti or fdr"})
    min_neurons: int = field(default=2000, metadata={"help": "npti: keep at least this many"})
    threshold: float = field(default=0.1, metadata={"help": "npti: keep every neuron with diff >= this"})
    alpha: float = field(default=0.01, metadata={"help": "fdr: false discovery rate (BH q-value bound)"})
    min_diff: float = field(default=0.0, metadata={"help": "fdr: smallest P_active difference kept"})

    def check(self) -> None:
        """Every field in its range (a UserError naming the field)."""
        if self.method not in _RULES:
            raise UserError(
                f"unknown selection method {self.method!r}; choose {', '.join(rules())}", field="method"
            )
        if self.min_neurons < 0:
            raise UserError(f"{self.min_neurons} is negative; pass 0 or more", field="min_neurons")
        for name, v in (("threshold", self.threshold), ("min_diff", self.min_diff)):
            if not math.isfinite(v) or not -1 <= v <= 1:
                raise UserError(
                    f"{v} is not a number between -1 and 1 (a difference of probabilities)", field=name
                )
        if not math.isfinite(self.alpha) or not 0 < self.alpha <= 1:
            raise UserError(f"{self.alpha} is not in (0, 1]", field="alpha")


# A rule maps (diff, BH q-value, config), flat over all neurons, to the kept flat ids in order.
Rule = Callable[[Tensor, Tensor, SelectConfig], Tensor]
_RULES: dict[str, Rule] = {}


def register_rule(name: str) -> Callable[[Rule], Rule]:
    """Register a selection rule under `name` (a name registered twice raises)."""

    def deco(fn: Rule) -> Rule:
        if name in _RULES:
            raise ValueError(f"selection rule {name!r} is already registered")
        _RULES[name] = fn
        return fn

    return deco


def rules() -> list[str]:
    return sorted(_RULES)


def two_proportion_z(stats_p: Stats, stats_q: Stats) -> tuple[Tensor, Tensor, Tensor]:
    """Per neuron z, one-sided p (P more often active than Q) and BH q-values, flat [n_neurons]."""
    n1, n2 = float(stats_p.n_tokens), float(stats_q.n_tokens)
    x1, x2 = stats_p.n_active.double().flatten(), stats_q.n_active.double().flatten()
    p1, p2 = x1 / max(n1, 1.0), x2 / max(n2, 1.0)
    pooled = (x1 + x2) / max(n1 + n2, 1.0)
    se = (pooled * (1 - pooled) * (1 / max(n1, 1.0) + 1 / max(n2, 1.0))).sqrt()
    z = torch.where(se > 0, (p1 - p2) / se.clamp(min=1e-300), torch.zeros_like(se))
    p = torch.from_numpy(ndtr(-z.numpy()))
    return z, p, bh_qvalues(p)


def bh_qvalues(p: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Benjamini-Hochberg adjusted p-values (monotone, capped at 1)."""
    m = p.numel()
    order = torch.argsort(p, stable=True)
    ranked = p[order] * m / torch.arange(1, m + 1, dtype=p.dtype)
    ranked = torch.flip(torch.cummin(torch.flip(ranked, [0]), 0).values, [0]).clamp(max=1.0)
    q = torch.empty_like(p)
    q[order] = ranked
    return q


def q95(stats: Stats) -> Float[Tensor, "n_layers d_mlp"]:
    """Lower edge of the first bin where the cumulative count reaches 95% of the neuron's tokens."""
    cum = stats.hist.cumsum(-1)
    total = cum[..., -1:]
    reached = cum.double() >= QUANTILE * total.double()
    first = reached.int().argmax(-1)
    lows = bin_lower_edges().clamp(min=0.0).to(first.device)
    return lows[first]


@register_rule("npti")
def _npti(diff: Tensor, q: Tensor, cfg: SelectConfig) -> Tensor:
    order = torch.sort(diff, descending=True, stable=True).indices
    n_keep = max(cfg.min_neurons, int((diff >= cfg.threshold).sum()))
    return order[: min(n_keep, diff.numel())]


@register_rule("fdr")
def _fdr(diff: Tensor, q: Tensor, cfg: SelectConfig) -> Tensor:
    order = torch.sort(diff, descending=True, stable=True).indices
    keep = (q[order] <= cfg.alpha) & (diff[order] >= cfg.min_diff) & (diff[order] > 0)
    return order[keep]


def select_neurons(
    stats_p: Stats, stats_q: Stats, cfg: SelectConfig, *, trait: str, pole: str, model: str
) -> NeuronSet:
    """The neurons of pole P (statistics `stats_p`) against the opposite pole (`stats_q`)."""
    cfg.check()
    if stats_p.shape != stats_q.shape:
        raise UserError(f"statistics of {trait} {pole} and its opposite have different shapes")
    if stats_p.n_tokens == 0 or stats_q.n_tokens == 0:
        raise UserError(f"{trait}: a pole has no recorded answer tokens; run search first")
    n_layers, d_mlp = stats_p.shape
    # float32 as the reference computed it, so ties and the threshold behave the same.
    diff = (
        stats_p.n_active.float() / stats_p.n_tokens - stats_q.n_active.float() / stats_q.n_tokens
    ).flatten()
    z, p, q = two_proportion_z(stats_p, stats_q)
    kept = _RULES[cfg.method](diff, q, cfg)
    p_act = (stats_p.n_active.float() / stats_p.n_tokens).flatten()
    return NeuronSet(
        trait=trait,
        pole=pole,
        model=model,
        n_layers=n_layers,
        d_mlp=d_mlp,
        layer=kept // d_mlp,
        index=kept % d_mlp,
        diff=diff[kept].double(),
        p_active=p_act[kept].double(),
        q95=q95(stats_p).flatten()[kept].float().double(),
        z=z[kept],
        p=p[kept],
        q=q[kept],
        method=cfg.method,
        params=asdict(cfg),
        provenance={k: str(stats_p.meta[k]) for k in ("protocol", "protocol_hash") if k in stats_p.meta},
    )


@dataclass(frozen=True)
class PoleReport:
    """How a selected set sits against its opposite: what the select summary prints."""

    name: str
    kept: int
    positive: int  # neurons with diff > 0: more active under this pole than the opposite
    shared: int  # neurons also in the opposite pole's set
    opposite: str

    def warnings(self, cfg: SelectConfig) -> list[str]:
        out = []
        if self.positive < self.kept:
            out.append(
                f"{self.name}: {self.kept - self.positive} of {self.kept} neurons have diff <= 0 (they do not "
                f"separate the poles; the minimum count {cfg.min_neurons} forced them in): pass "
                f"--min-neurons {self.positive} or fewer, or --method fdr"
            )
        if self.shared:
            out.append(
                f"{self.name}: shares {self.shared} neurons with {self.opposite}; an induction would shift and "
                "clamp the same neurons (lower --min-neurons)"
            )
        return out


def report(sets: dict[str, NeuronSet]) -> list[PoleReport]:
    """Kept, diff > 0 and shared with the opposite pole, for every set whose opposite is there too."""
    out = []
    for name, ns in sets.items():
        opp = sets.get(pole_name(ns.trait, opposite(ns.pole)))
        shared = len(ns & opp) if opp is not None else 0
        out.append(
            PoleReport(
                name, len(ns), int((ns.diff > 0).sum()), shared, pole_name(ns.trait, opposite(ns.pole))
            )
        )
    return out


def select_run(
    run: str | Path, out: str | Path | None = None, cfg: SelectConfig | None = None
) -> dict[str, NeuronSet]:
    """The neuron sets of every trait pole of a search run, saved to `out/{Trait}_{pole}/` if given.

    Every statistics file is read and checked before any set is made or written. A trait counts
    as searched when any of its statistics files exists; a missing, unfinished or damaged file of
    a searched trait is a UserError naming it.
    """
    cfg = cfg or SelectConfig()
    cfg.check()
    stats = {}
    for trait in TRAITS:
        files = [stats_path(run, trait, p) for p in POLES]
        if not any(f.is_file() or f.with_suffix(".json").is_file() for f in files):
            continue
        for pole in POLES:
            stats[(trait, pole)] = load_run_stats(run, trait, pole)
    if not stats:
        raise UserError(f"{run}: no trait has statistics; run npti search first")
    sets = {}
    for (trait, pole), sp in stats.items():
        ns = select_neurons(
            sp,
            stats[(trait, opposite(pole))],
            cfg,
            trait=trait,
            pole=pole,
            model=str(sp.meta.get("model", "")),
        )
        sets[ns.name] = ns
    if out is not None:
        from npti_lens.method.directions import mean_difference

        for (trait, pole), sp in stats.items():
            ns = sets[pole_name(trait, pole)]
            ns.save(Path(out) / ns.name)
            if sp.resid_sum is not None:  # the direction baseline from the same tokens
                sq = stats[(trait, opposite(pole))]
                mean_difference(sp, sq, trait=trait, pole=pole, model=ns.model).save(Path(out) / ns.name)
    return sets
