"""Workflow: choose the strength of an induction instead of guessing it (`npti tune`).

For one trait pole, sweep the strength (NPTI's gamma, or the vector's coefficient), and at each
point measure the effect (mean trait score minus the score with no intervention), the fluency, and
the capability cost (change in negative log-likelihood per token of reference answers). The choice
is the strongest effect whose fluency stays at or above a floor and whose cost stays under a limit
(ties: the smaller strength); the whole curve is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from npti_lens.core.averages import mean
from npti_lens.core.errors import UserError
from npti_lens.core.files import parse_numbers
from npti_lens.evaluation.capability import answer_nll
from npti_lens.judges.registry import Judge, score_rows
from npti_lens.method.protocol import Protocol, protocol_for
from npti_lens.model.generation import GenerateConfig
from npti_lens.workflows.answers import Condition, answer, intervention

METHODS = ("npti", "vector")


@dataclass
class TuneConfig:
    method: str = field(default="npti", metadata={"help": "npti (gamma) or vector (coefficient)"})
    strengths: str = field(default="0.5,1,1.5,2,3,5", metadata={"help": "comma-separated strengths to sweep"})
    fluency_floor: float = field(
        default=0.9, metadata={"help": "keep points whose mean fluency is at least this"}
    )
    max_nll_increase: float = field(
        default=0.5, metadata={"help": "keep points whose NLL per token of --texts rises by at most this"}
    )
    layers: str = field(
        default="all",
        metadata={"help": "vector: layer bands to sweep too: all, or early,middle,late (thirds), or 0,1,..."},
    )
    seed: int = field(default=0, metadata={"help": "seed of the neuron masks"})

    def check(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"{self.method!r} is not one of {', '.join(METHODS)}", field="method")
        if not math.isfinite(self.fluency_floor) or not math.isfinite(self.max_nll_increase):
            raise UserError(
                "the fluency floor and the NLL limit must be finite numbers", field="fluency_floor"
            )


@dataclass
class TuneResult:
    curve: list[dict[str, Any]]  # one row per strength (and the baseline, strength None)
    choice: dict[str, Any] | None  # the chosen point, None when no point meets the limits
    cfg: TuneConfig


def bands(spec: str, n_layers: int) -> dict[str, list[int] | None]:
    """Named layer bands: `all` (None: every layer), `early`/`middle`/`late` thirds, or one explicit list."""
    from npti_lens.workflows.ablation import layer_bands

    thirds = {k.removeprefix("layers_"): v for k, v in layer_bands(n_layers).items()}
    out: dict[str, list[int] | None] = {}
    names = [x.strip() for x in spec.split(",") if x.strip()]
    if all(n in ("all", *thirds) for n in names):
        for n in names:
            out[n] = None if n == "all" else thirds[n]
        return out
    return {spec: parse_numbers(spec, "--layers", int)}


def choose(
    points: list[dict[str, Any]], fluency_floor: float, max_nll_increase: float
) -> dict[str, Any] | None:
    """The point of largest `effect` with `fluency` >= floor and `delta_nll` <= limit (ties: smaller strength)."""
    ok = [p for p in points if p["fluency"] >= fluency_floor and p["delta_nll"] <= max_nll_increase]
    return max(ok, key=lambda p: (p["effect"], -p["strength"])) if ok else None


def tune(
    model: TransformerBridge,
    condition_at: Any,
    questions: list[Any],
    texts: list[tuple[str, str]],
    judge: Judge,
    cfg: TuneConfig | None = None,
    *,
    gcfg: GenerateConfig | None = None,
    protocol: Protocol | str | None = None,
) -> TuneResult:
    """Sweep `cfg.strengths`; `condition_at(strength)` gives the Condition at a strength.

    Effects are judged by `judge` (its `trait_score` and `fluency`), the cost on `texts`
    ((question, reference answer) pairs) with the intervention acting at answer positions.
    """
    cfg = cfg or TuneConfig()
    cfg.check()
    proto = protocol_for(model, protocol)
    strengths = parse_numbers(cfg.strengths, "--strengths")

    def measure(condition: Condition, strength: float | None) -> dict[str, Any]:
        rows = answer(model, questions, condition, gcfg, protocol=proto)
        scored = score_rows(rows, judge)
        with intervention(model, condition, proto):
            nll, n = answer_nll(model, texts) if texts else (0.0, 1)
        return {
            "strength": strength,
            "trait_score": mean(r["trait_score"] for r in scored),
            "fluency": mean(r["fluency"] for r in scored),
            "nll": nll / n,
        }

    first = condition_at(strengths[0])
    base = measure(Condition.none(first.trait, first.pole), None)
    curve = [{**base, "layers": None, "effect": 0.0, "delta_nll": 0.0}]
    for band, layers in (
        bands(cfg.layers, int(model.cfg.n_layers)).items() if cfg.method == "vector" else [(None, None)]
    ):
        for s in strengths:
            cond = condition_at(s)
            if layers is not None:
                cond = Condition.vector(cond.direction, s, layers)
            point = {**measure(cond, s), "layers": band}
            point.update(
                effect=point["trait_score"] - base["trait_score"], delta_nll=point["nll"] - base["nll"]
            )
            curve.append(point)
    choice = choose(curve[1:], cfg.fluency_floor, cfg.max_nll_increase)
    return TuneResult(curve=curve, choice=choice, cfg=cfg)
