"""Ablations of an induction: which part of it does the work, and how much of it is needed.

Every condition answers the same questions with the neutral prompt and yields rows in the format
of `npti induce` (plus `condition`, `k`, `layers`), so any judge can score them:

- `none`: no intervention; `both`: the full induction; `activate_only` / `deactivate_only`: only
  the shift of the pole's neurons / only the clamp of the opposite pole's;
- `random`: random neurons matched per layer in count and shift size to both sets;
- `gamma_sweep`: the full induction at each gamma; `top_k`: only the k neurons of largest
  difference of each set; `layers_early` / `layers_middle` / `layers_late`: only the neurons in
  that third of the layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from npti_lens.core.errors import UserError
from npti_lens.core.files import parse_numbers
from npti_lens.evaluation import evidence
from npti_lens.evaluation.evidence import Cell
from npti_lens.method.directions import Direction
from npti_lens.method.induction import InduceConfig, random_control
from npti_lens.method.neurons import NeuronSet
from npti_lens.method.protocol import Protocol, protocol_for
from npti_lens.model.generation import GenerateConfig
from npti_lens.model.load import Model
from npti_lens.workflows.answers import Condition, answer


@dataclass
class AblationConfig:
    gamma: float = field(default=1.0, metadata={"help": "gamma of every condition but the sweep"})
    gammas: str = field(default="0.6,1.0,1.5", metadata={"help": "comma-separated gammas of the sweep"})
    top_k: str = field(default="10,100,1000", metadata={"help": "comma-separated neuron counts per set"})
    seed: int = field(default=0, metadata={"help": "seed of the masks and the random control"})
    control_draws: int = field(default=5, metadata={"help": "random controls drawn (each with its own seed)"})
    vector_coef: float | None = field(
        default=None, metadata={"help": "also answer under the direction baseline at this coefficient"}
    )


def layer_bands(n_layers: int) -> dict[str, list[int]]:
    """Early, middle and late thirds of the layers (the middle takes the remainder)."""
    third = n_layers // 3
    return {
        "layers_early": list(range(third)),
        "layers_middle": list(range(third, n_layers - third)),
        "layers_late": list(range(n_layers - third, n_layers)),
    }


def conditions(
    target: NeuronSet, opp: NeuronSet, cfg: AblationConfig, rules: InduceConfig | None = None
) -> list[dict[str, Any]]:
    """(name, sets, induce config, extra fields) of every ablation condition, in a fixed order.

    `rules` gives the keep rule and clamp (a protocol's); its gamma and seed are replaced by cfg's.
    """
    base = replace(rules or InduceConfig(), gamma=cfg.gamma, seed=cfg.seed)
    out: list[dict[str, Any]] = [
        {"condition": "none", "pairs": None, "icfg": None},
        {"condition": "both", "pairs": [(target, opp)], "icfg": base},
        {"condition": "activate_only", "pairs": [(target, opp)], "icfg": replace(base, deactivate=False)},
        {"condition": "deactivate_only", "pairs": [(target, opp)], "icfg": replace(base, activate=False)},
    ]
    both = torch.cat([target.flat(), opp.flat()])
    if cfg.control_draws < 1:
        raise UserError(f"{cfg.control_draws} is not 1 or more", field="control_draws")
    for j in range(cfg.control_draws):  # draw 0 has the seeds npti_lens 0.1 used
        rand = (
            random_control(target, seed=cfg.seed + 2 * j, exclude=both),
            random_control(opp, seed=cfg.seed + 2 * j + 1, exclude=both),
        )
        out.append({"condition": "random", "draw": j, "pairs": [rand], "icfg": base})
    for g in parse_numbers(cfg.gammas, "--gammas"):
        out.append({"condition": "gamma_sweep", "pairs": [(target, opp)], "icfg": replace(base, gamma=g)})
    for k in parse_numbers(cfg.top_k, "--top-k", int):
        out.append({"condition": "top_k", "k": k, "pairs": [(target.top(k), opp.top(k))], "icfg": base})
    for band, layers in layer_bands(target.n_layers).items():
        pair = (target.in_layers(layers), opp.in_layers(layers))
        if len(pair[0]) + len(pair[1]):
            out.append(
                {"condition": band, "layers": f"{layers[0]}-{layers[-1]}", "pairs": [pair], "icfg": base}
            )
    return out


def run_ablation(
    model: Model,
    target: NeuronSet,
    opp: NeuronSet,
    questions: list[Any],  # str or npti_lens.inputs.questions.Question, as answer() takes
    cfg: AblationConfig,
    gcfg: GenerateConfig | None = None,
    *,
    protocol: Protocol | str | None = None,
    allow_other_model: bool = False,
    direction: Direction | None = None,
) -> list[dict[str, Any]]:
    """Answer `questions` under every condition; one answers row per (condition, question).

    Prompts, sampling (when `gcfg` is None), keep rule and clamp come from `protocol` (default:
    the model's, see `protocol_for`). With `direction` and `cfg.vector_coef`, the direction baseline
    answers too (condition `vector`), beside the parts of the induction.
    """
    proto = protocol_for(model, protocol)
    if cfg.vector_coef is not None and direction is None:  # before any answer is generated
        raise UserError(
            "no direction beside the neuron sets: select from a search of this version", field="vector_coef"
        )
    rows = []
    for c in conditions(target, opp, cfg, proto.induce_config()):
        pairs, icfg = c["pairs"], c["icfg"]
        extra = {
            "k": c.get("k"),
            "layers": c.get("layers"),
            "draw": c.get("draw"),
            "n_shifted": sum(len(t) for t, _ in pairs) if pairs and icfg.activate else 0,
            "n_clamped": sum(len(o) for _, o in pairs) if pairs and icfg.deactivate else 0,
        }
        named = {"name": c["condition"], "extra": extra}
        if pairs is None:
            condition = Condition.none(target.trait, target.pole, **named)
        elif c["condition"] == "random":
            condition = Condition.random(pairs, icfg, trait=target.trait, pole=target.pole, **named)
        else:
            condition = Condition.npti(pairs, icfg, **named)
        rows += answer(model, questions, condition, gcfg, protocol=proto, allow_other_model=allow_other_model)
    if cfg.vector_coef is not None:
        vector = Condition.vector(direction, cfg.vector_coef, extra={"k": None, "layers": None, "draw": None})
        rows += answer(model, questions, vector, gcfg, protocol=proto, allow_other_model=allow_other_model)
    return rows


def ablation_evidence(scored: list[dict[str, Any]], score: str = "trait_score") -> Cell:
    """The evidence of the full induction (`both`) against `none` and the `random` draws, paired over
    the questions (rows as `run_ablation` makes them, with the judge's `score`)."""

    def scores(cond: str, draw: Any = None) -> list[float]:
        rows = [r for r in scored if r["condition"] == cond and r.get("draw") == draw]
        return [float(r[score]) for r in rows]

    both = [r for r in scored if r["condition"] == "both"]
    if not both:
        raise UserError("ablation rows hold no 'both' condition")
    draws = sorted({r["draw"] for r in scored if r["condition"] == "random"})
    first = both[0]
    return evidence.judge_cells(
        [
            evidence.cell(
                first["trait"],
                first["pole"],
                first["gamma"],
                scores("both"),
                scores("none"),
                [scores("random", d) for d in draws],
            )
        ]  # fmt: skip
    )[0]
