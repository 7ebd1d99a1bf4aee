"""`npti demo`: the whole method on the shipped organism, from search to a gamma sweep, in minutes.

Search on persona-prompted answers for all five traits, select neurons, then answer held-out
questions (never used in search or training) for every trait and pole: with no intervention, with
NPTI at several gammas, with a random-neuron control matched per layer in count and shift size,
and with the persona prompt (P2) as the upper reference. Scored by the organism judge, whose
positive control (does it see P2 against no prompt, per pole?) gates every verdict (`judge blind`)
and gives each cell NPTI's effect as a share of P2's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from npti_lens.core.constants import POLES, opposite, pole_name
from npti_lens.core.errors import UserError
from npti_lens.core.files import (
    parse_numbers,
    parse_traits,
    to_csv,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from npti_lens.evaluation import evidence
from npti_lens.evaluation.control import Control, trait_control
from npti_lens.evaluation.evidence import Cell
from npti_lens.judges.organism import attribute
from npti_lens.method.directions import Direction, random_direction
from npti_lens.method.induction import random_control
from npti_lens.method.protocol import ORGANISM, load_protocol
from npti_lens.method.selection import SelectConfig, select_run
from npti_lens.model.generation import GenerateConfig
from npti_lens.model.load import load_model
from npti_lens.organism import corpus
from npti_lens.workflows.answers import Condition, answer
from npti_lens.workflows.judging import p2_descriptions
from npti_lens.workflows.search import SearchConfig, run_search

RESULTS_CSV = "demo_results.csv"
METHODS = ("npti", "vector", "simple", "p2")


@dataclass
class DemoConfig:
    traits: str = field(default="all", metadata={"help": "'all' or comma-separated trait names"})
    n_search: int = field(default=32, metadata={"help": "search questions per trait"})
    n_test: int = field(default=20, metadata={"help": "held-out questions per trait and pole"})
    gammas: str = field(default="1,2,3,5", metadata={"help": "comma-separated gammas of the sweep"})
    min_neurons: int = field(default=20, metadata={"help": "selection: keep at least this many per pole"})
    threshold: float = field(
        default=0.2,
        metadata={
            "help": "selection: keep every neuron with diff >= this (0.1, the paper's, takes ~15% "
            "of the organism's neurons, whose shift then swamps its fluency)"
        },
    )
    compare_gamma: float = field(
        default=3.0, metadata={"help": "gamma of NPTI in the method comparison figure"}
    )
    compare_coef: float = field(default=1.0, metadata={"help": "coefficient of the vector in that figure"})
    max_new_tokens: int = field(default=48, metadata={"help": "tokens per answer"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward"})
    seed: int = field(default=0, metadata={"help": "seed of personas, masks and the control"})
    control_draws: int = field(
        default=5, metadata={"help": "random controls drawn per pole (each with its own seed)"}
    )
    methods: str = field(
        default="npti,simple,p2",
        metadata={
            "help": "methods compared: npti, vector (the mean-difference direction), simple, p2 (always "
            "answered: the judge's positive control)"
        },
    )
    vector_coefs: str = field(
        default="0.25,0.5,1,2",
        metadata={"help": "coefficients of the vector method (its fluency breaks near 2)"},
    )
    vector_layers: str = field(
        default="all", metadata={"help": "layers the vector is added to: all or 0,1,..."}
    )


@dataclass
class DemoResult:
    rows: list[dict[str, Any]]
    out: Path
    files: dict[str, Path]
    evidence: list[Cell] = field(default_factory=list)
    control: Control | None = None  # the organism judge's positive control (P2 on held-out questions)

    def evidence_table(self) -> str:
        """Per cell: the change from no intervention and from the controls, with the verdict."""
        from npti_lens.evaluation.report import evidence_table

        return evidence_table(self.evidence, "gamma")

    def table(self) -> str:
        head = (
            f"{'trait':<18}{'pole':<6}{'condition':<10}{'gamma':>6}{'target':>8}{'opposite':>9}{'fluency':>8}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            g = "" if r["gamma"] is None else f"{r['gamma']:g}"
            lines.append(
                f"{r['trait']:<18}{r['pole']:<6}{r['condition']:<10}{g:>6}{r['target']:>8.3f}"
                f"{r['opposite']:>9.3f}{r['fluency']:>8.3f}"
            )
        return "\n".join(lines)


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def run_demo(
    cfg: DemoConfig, out: str | Path, *, model: TransformerBridge | None = None, progress: bool = False
) -> DemoResult:
    out = Path(out)
    model = model or load_model("organism")
    gammas = parse_numbers(cfg.gammas, "--gammas")
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise UserError(f"{cfg.methods!r}: choose from {', '.join(METHODS)}", field="methods")
    coefs = parse_numbers(cfg.vector_coefs, "--vector-coefs")
    layers = (
        None
        if cfg.vector_layers.strip() == "all"
        else parse_numbers(cfg.vector_layers, "--vector-layers", int)
    )
    if cfg.compare_gamma not in gammas:
        raise UserError(f"--compare-gamma: {cfg.compare_gamma:g} is not one of --gammas {cfg.gammas}")
    if "vector" in methods and cfg.compare_coef not in coefs:
        raise UserError(
            f"{cfg.compare_coef:g} is not one of --vector-coefs {cfg.vector_coefs}", field="compare_coef"
        )
    gcfg = GenerateConfig(
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, repetition_penalty=1.0, seed=cfg.seed
    )
    search_dir, test_dir, personas = corpus.write_data(out / "data", cfg.n_search, cfg.seed)
    traits = parse_traits(cfg.traits)
    run_search(
        model,
        search_dir,
        personas,
        out / "run",
        SearchConfig(traits=cfg.traits, seed=cfg.seed),
        gcfg,
        protocol=ORGANISM,
        resume=True,
        progress=progress,
    )
    scfg = SelectConfig(min_neurons=cfg.min_neurons, threshold=cfg.threshold)
    sets = select_run(out / "run", out / "neurons", scfg)
    vectors = {name: Direction.load(out / "neurons" / name) for name in sets} if "vector" in methods else {}
    if cfg.control_draws < 1:
        raise UserError(f"{cfg.control_draws} is not 1 or more", field="control_draws")
    random_sets = {}
    for i, (name, s) in enumerate(sets.items()):
        pair = torch.cat([s.flat(), sets[pole_name(s.trait, opposite(s.pole))].flat()])
        # draw 0 is the single control of npti_lens 0.1; draw j has seed + 1000 j
        random_sets[name] = [
            random_control(s, seed=cfg.seed + i + 1000 * j, exclude=pair) for j in range(cfg.control_draws)
        ]

    split = corpus.question_split()
    controls: dict[str, Any] = {}
    cells: list[evidence.Cell] = []
    generations: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []

    def add(
        trait: str, pole: str, condition: str, gamma: float | None, *draws: list[dict[str, Any]]
    ) -> list[list[float]]:
        """Score the answers (one list per control draw, else one) and add the condition's row."""
        scored = []
        for j, answered in enumerate(draws):
            for r in answered:
                s = attribute(r["answer"], trait, pole)
                scored.append(s)
                draw = {"draw": j} if condition == "random" else {}
                generations.append(
                    {
                        "question": r["question"],
                        "answer": r["answer"],
                        "trait": trait,
                        "pole": pole,
                        "condition": condition,
                        "gamma": gamma,
                        **draw,
                        **s,
                    }
                )
        rows.append(
            {
                "trait": trait,
                "pole": pole,
                "condition": condition,
                "gamma": gamma,
                "target": _mean(scored, "target_fraction"),
                "opposite": _mean(scored, "opposite_fraction"),
                "fluency": _mean(scored, "fluency"),
                "n": len(scored),
            }
        )
        n = len(draws[0])
        return [[s["target_fraction"] for s in scored[j * n : (j + 1) * n]] for j in range(len(draws))]

    proto = load_protocol(ORGANISM)

    def ask(condition: Condition) -> list[dict[str, Any]]:
        return answer(model, qs, condition, gcfg, protocol=proto)

    from tqdm.auto import tqdm

    def toward(answered: list[dict[str, Any]], trait: str, pole: str) -> list[float]:
        return [attribute(r["answer"], trait, pole)["target_fraction"] for r in answered]

    bar = tqdm(total=len(traits) * len(POLES), desc="answer held-out", unit="pole", disable=not progress)
    for t in traits:
        qs = split[t]["test"][: cfg.n_test]
        plain = ask(Condition.none())
        persona = {}  # P2: the judge's positive control, always answered
        for p in POLES:
            descs = p2_descriptions({(t, p): corpus.personas(t, p)}, t, p, len(qs), cfg.seed)
            persona[p] = ask(Condition.baseline("p2", t, p, descs))
        seen = trait_control(t, {"none": {p: toward(plain, t, p) for p in POLES},
                                 **{c: {p: toward(persona[c], t, p) for p in POLES} for c in POLES}}, seed=cfg.seed)  # fmt: skip
        controls[t] = seen
        for p in POLES:
            bar.update(1)
            (none,) = add(t, p, "none", None, plain)
            p2, sees = toward(persona[p], t, p), seen.poles[p].sees
            target, opp = pole_name(t, p), pole_name(t, opposite(p))
            for g in gammas if "npti" in methods else []:
                icfg = proto.induce_config(gamma=g, seed=cfg.seed)
                (npti,) = add(t, p, "npti", g, ask(Condition.npti([(sets[target], sets[opp])], icfg)))
                fluency = rows[-1]["fluency"]
                draws = [
                    ask(Condition.random([(c_t, c_o)], icfg, trait=t, pole=p))
                    for c_t, c_o in zip(random_sets[target], random_sets[opp], strict=True)
                ]
                scores = add(t, p, "random", g, *draws)
                cells.append(evidence.cell(t, p, g, npti, none, scores, seed=cfg.seed, fluency=fluency, p2=p2,
                                           judge_sees=sees))  # fmt: skip
            for coef in coefs if "vector" in methods else []:
                (steered,) = add(t, p, "vector", coef, ask(Condition.vector(vectors[target], coef, layers)))
                fluency = rows[-1]["fluency"]
                draws = [
                    ask(Condition.vector(random_direction(vectors[target], seed=cfg.seed + 1000 * j), coef, layers,
                                         random=True))
                    for j in range(cfg.control_draws)
                ]  # fmt: skip
                scores = add(t, p, "random-vector", coef, *draws)
                cells.append(evidence.cell(t, p, coef, steered, none, scores, seed=cfg.seed, method="vector",
                                           fluency=fluency, p2=p2, judge_sees=sees))  # fmt: skip
            if "simple" in methods:
                simple = Condition.baseline("simple", t, p, [proto.adjective(t, p)] * len(qs))
                add(t, p, "simple", None, ask(simple))
            add(t, p, "persona", None, persona[p])

    bar.close()
    for method in METHODS:  # one correction family per method: adding a method leaves the others' verdicts
        evidence.judge_cells([c for c in cells if c.method == method])
    files = {
        "csv": out / RESULTS_CSV,
        "json": out / "demo_results.json",
        "generations": out / "demo_generations.jsonl",
        "figure": out / "gamma_sweep.png",
        "methods": out / "method_comparison.png",
        "evidence": out / "demo_evidence.csv",
        "cells": out / "evidence.png",
        "vector_cells": out / "evidence_vector.png",
        "control": out / "control.json",
    }
    write_text_atomic(files["csv"], to_csv(rows))
    write_text_atomic(files["evidence"], to_csv(evidence.to_rows(cells)))
    write_json_atomic(
        files["json"], {"config": asdict(cfg), "rows": rows, "neurons": {k: len(v) for k, v in sets.items()}}
    )
    write_jsonl_atomic(files["generations"], generations)
    from npti_lens.evaluation.curves import evidence_forest
    from npti_lens.evaluation.figures import gamma_sweep, method_comparison

    gamma_sweep(rows, files["figure"])
    for method, key in (("npti", "cells"), ("vector", "vector_cells")):
        if any(c.method == method for c in cells):
            evidence_forest(
                evidence.to_rows([c for c in cells if c.method == method]),
                files[key],
                ylabel="target-pole fraction",
            )
    if not any(c.method == "vector" for c in cells):
        del files["vector_cells"]
    if not any(c.method == "npti" for c in cells):
        del files["cells"]
    method_comparison(
        [
            {**r, "score": r["target"], **({"gamma": None} if r["condition"] == "vector" else {})}
            for r in rows
            if r["condition"] != "vector" or r["gamma"] == cfg.compare_coef
        ],
        files["methods"],
        gamma=cfg.compare_gamma,
        ylabel="target-pole fraction",
    )
    control = Control(controls, judge={"name": "organism"})
    control.save(out)
    return DemoResult(rows=rows, out=out, files=files, evidence=cells, control=control)


def summary_lines(result: DemoResult) -> list[str]:
    """Mean over traits and poles per condition: the headline of the demo."""
    keyed: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for r in result.rows:
        keyed.setdefault((r["condition"], r["gamma"]), []).append(r)
    lines = []
    for (cond, g), rs in keyed.items():
        label = cond if g is None else f"{cond} gamma={g:g}"
        lines.append(
            f"{label:<22} target {_mean(rs, 'target'):.3f}  opposite {_mean(rs, 'opposite'):.3f}  "
            f"fluency {_mean(rs, 'fluency'):.3f}"
        )
    return lines
