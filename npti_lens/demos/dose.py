"""The real-model demo's dose-response: each pole walked up its strength ladder (NPTI's gamma, the
vector's coefficient) with random controls at every strength, every level of every pole in one
batch, until the mean fluency falls below the floor; then, per pole and method, the evidence at
the chosen strength (the largest effect among the fluent ones). `d` is the demo's shared state
(`npti_lens.demos.real._Demo`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from npti_lens.core.averages import mean
from npti_lens.core.constants import POLES, opposite, pole_name
from npti_lens.core.files import parse_numbers
from npti_lens.evaluation import evidence
from npti_lens.method.induction import random_control
from npti_lens.workflows.answers import AnswerJob, Condition


def strongest_fluent(points: list[dict[str, Any]], floor: float) -> dict[str, Any] | None:
    """The point of largest effect whose fluency is >= floor (ties: the smaller strength): `tune.choose`
    without a capability limit."""
    from npti_lens.workflows.tune import choose

    return choose([{**p, "delta_nll": 0.0} for p in points], floor, math.inf)


def sweep(d: Any) -> None:
    """Walk each pole up its strength ladder, every level of every pole in one batch, until the
    mean fluency falls below the floor; NPTI (and the vector) with their random controls."""
    from npti_lens.method.directions import Direction, random_direction

    k, g_ladder = d.cfg.control_draws, parse_numbers(d.cfg.gammas, "--gammas")
    npti_at: dict[tuple[str, str], Any] = {}
    for ti, t in enumerate(d.traits):
        for p in POLES:
            target, opp = d.sets[pole_name(t, p)], d.sets[pole_name(t, opposite(p))]
            pair = torch.cat([target.flat(), opp.flat()])
            ctrl = [(random_control(target, seed=d.cfg.seed + 2 * ti + 1000 * (j + 1), exclude=pair),
                     random_control(opp, seed=d.cfg.seed + 2 * ti + 1 + 1000 * (j + 1), exclude=pair)) for j in range(k)]  # fmt: skip

            def npti_jobs(
                g: float, t: str = t, p: str = p, target: Any = target, opp: Any = opp, ctrl: Any = ctrl
            ) -> list[AnswerJob]:
                icfg = d.proto.induce_config(gamma=g, seed=d.cfg.seed)
                name = pole_name(t, p)
                return [AnswerJob(f"{name}_npti_{g:g}", d.test(t), Condition.npti([(target, opp)], icfg), d.gcfg("neutral"))] + [
                    AnswerJob(f"{name}_random_{g:g}_{j}", d.test(t), Condition.random([c], icfg, trait=t, pole=p), d.gcfg("neutral"))
                    for j, c in enumerate(ctrl)
                ]  # fmt: skip

            npti_at[(t, p)] = npti_jobs
    _walk(d, "npti", g_ladder, npti_at)
    if "vector" in d.methods:
        c_ladder, vec_at = parse_numbers(d.cfg.vector_coefs, "--vector-coefs"), {}
        for t in d.traits:
            for p in POLES:
                vec = Direction.load(d.out / "neurons" / pole_name(t, p))

                def vector_jobs(c: float, t: str = t, p: str = p, vec: Any = vec) -> list[AnswerJob]:
                    name = pole_name(t, p)
                    return [AnswerJob(f"{name}_vector_{c:g}", d.test(t), Condition.vector(vec, c), d.gcfg("neutral"))] + [
                        AnswerJob(f"{name}_random-vector_{c:g}_{j}", d.test(t),
                                  Condition.vector(random_direction(vec, seed=d.cfg.seed + 1000 * (j + 1)), c, random=True), d.gcfg("neutral"))
                        for j in range(k)
                    ]  # fmt: skip

                vec_at[(t, p)] = vector_jobs
        _walk(d, "vector", c_ladder, vec_at)


def _walk(d: Any, method: str, ladder: list[float], jobs_at: dict[tuple[str, str], Any]) -> None:
    alive = list(jobs_at)
    control = "random" if method == "npti" else "random-vector"
    for s in sorted(ladder):
        if not alive:
            break
        d.answer([j for tp in alive for j in jobs_at[tp](s)])
        for t, p in list(alive):
            keys = [j.key for j in jobs_at[(t, p)](s)]
            main = d.add_row(t, p, method, s, keys[:1])
            ctrl = d.add_row(t, p, control, s, keys[1:])
            d.sweep += [{"trait": t, "pole": p, "method": method, "strength": s, "keys": keys, **main},
                        {"trait": t, "pole": p, "method": control, "strength": s, **ctrl}]  # fmt: skip
            if main["fluency"] < d.cfg.fluency_floor:
                alive.remove((t, p))  # the first strength past the floor is the last one asked


def cells_at_chosen(d: Any) -> None:
    """Per pole and method, the cell at the chosen strength; one correction family per method."""
    for t in d.traits:
        for p in POLES:
            none = d.toward(f"{t}_none", p)
            p2 = d.toward(f"{pole_name(t, p)}_p2", p)
            for method in ("npti", "vector"):
                pts = [x for x in d.sweep if (x["trait"], x["pole"], x["method"]) == (t, p, method)]
                if not pts:
                    continue
                for x in pts:
                    x["scores"] = d.toward(x["keys"][0], p)
                    x["effect"] = mean(x["scores"]) - mean(none)
                pick = strongest_fluent(pts, d.cfg.fluency_floor)
                d.choices.append({"trait": t, "pole": p, "method": method, "chosen": None if pick is None else pick["strength"],
                                  "broke_at": next((x["strength"] for x in pts if x["fluency"] < d.cfg.fluency_floor), None),
                                  **{f"fluency_at_{x['strength']:g}": x["fluency"] for x in pts}})  # fmt: skip
                if pick is None:
                    continue
                draws = [d.toward(key, p) for key in pick["keys"][1:]]
                d.cells.append(evidence.cell(t, p, pick["strength"], pick["scores"], none, draws, seed=d.cfg.seed,
                                             method=method, fluency=pick["fluency"], p2=p2,
                                             judge_sees=d.control.sees(t, p)))  # fmt: skip
    for method in ("npti", "vector"):
        evidence.judge_cells([c for c in d.cells if c.method == method])
