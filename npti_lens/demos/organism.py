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

from npti_lens.core.averages import mean
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
from npti_lens.evaluation.control import Control, TraitControl, trait_control
from npti_lens.evaluation.evidence import Cell
from npti_lens.judges.organism import attribute
from npti_lens.method.directions import Direction, random_direction
from npti_lens.method.induction import random_control
from npti_lens.method.neurons import NeuronSet
from npti_lens.method.protocol import ORGANISM, Protocol, load_protocol
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


def run_demo(
    cfg: DemoConfig, out: str | Path, *, model: TransformerBridge | None = None, progress: bool = False
) -> DemoResult:
    """The demo as stages over one state: check the flags, search and select, answer the held-out
    questions under every condition, judge the cells, write the files."""
    demo = _setup(cfg, Path(out), model, progress)
    for stage in (_search, _held_out, _judge_cells):
        stage(demo)
    files = _write(demo)
    return DemoResult(rows=demo.rows, out=demo.out, files=files, evidence=demo.cells, control=demo.control)


@dataclass
class _Demo:
    """What the stages share: the settings, then what each stage adds."""

    model: TransformerBridge
    cfg: DemoConfig
    out: Path
    traits: list[str]
    methods: list[str]
    gammas: list[float]
    coefs: list[float]
    layers: list[int] | None
    gcfg: GenerateConfig
    proto: Protocol
    progress: bool
    sets: dict[str, NeuronSet] = field(default_factory=dict)
    vectors: dict[str, Direction] = field(default_factory=dict)
    random_sets: dict[str, list[NeuronSet]] = field(default_factory=dict)
    controls: dict[str, TraitControl] = field(default_factory=dict)
    control: Control | None = None
    cells: list[Cell] = field(default_factory=list)
    generations: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def ask(self, qs: list[Any], condition: Condition) -> list[dict[str, Any]]:
        return answer(self.model, qs, condition, self.gcfg, protocol=self.proto)

    def add(
        self, trait: str, pole: str, condition: str, gamma: float | None, *draws: list[dict[str, Any]]
    ) -> list[list[float]]:
        """Score the answers (one list per control draw, else one) and add the condition's row."""
        scored = []
        for j, answered in enumerate(draws):
            for r in answered:
                s = attribute(r["answer"], trait, pole)
                scored.append(s)
                draw = {"draw": j} if condition == "random" else {}
                self.generations.append({"question": r["question"], "answer": r["answer"], "trait": trait,
                                         "pole": pole, "condition": condition, "gamma": gamma, **draw, **s})  # fmt: skip
        self.rows.append({"trait": trait, "pole": pole, "condition": condition, "gamma": gamma,
                          "target": mean(r["target_fraction"] for r in scored),
                          "opposite": mean(r["opposite_fraction"] for r in scored),
                          "fluency": mean(r["fluency"] for r in scored), "n": len(scored)})  # fmt: skip
        n = len(draws[0])
        return [[s["target_fraction"] for s in scored[j * n : (j + 1) * n]] for j in range(len(draws))]


def _setup(cfg: DemoConfig, out: Path, model: TransformerBridge | None, progress: bool) -> _Demo:
    """Every flag checked before the model loads or anything is written."""
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
    if cfg.control_draws < 1:
        raise UserError(f"{cfg.control_draws} is not 1 or more", field="control_draws")
    traits = parse_traits(cfg.traits)
    gcfg = GenerateConfig(
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, repetition_penalty=1.0, seed=cfg.seed
    )
    return _Demo(model or load_model("organism"), cfg, out, traits, methods, gammas, coefs, layers, gcfg,
                 load_protocol(ORGANISM), progress)  # fmt: skip


def _search(d: _Demo) -> None:
    """Search on the organism's persona answers, select, and draw the random controls."""
    cfg = d.cfg
    search_dir, _, personas = corpus.write_data(d.out / "data", cfg.n_search, cfg.seed)
    run_search(d.model, search_dir, personas, d.out / "run", SearchConfig(traits=cfg.traits, seed=cfg.seed),
               d.gcfg, protocol=ORGANISM, resume=True, progress=d.progress)  # fmt: skip
    scfg = SelectConfig(min_neurons=cfg.min_neurons, threshold=cfg.threshold)
    d.sets = select_run(d.out / "run", d.out / "neurons", scfg)
    if "vector" in d.methods:
        d.vectors = {name: Direction.load(d.out / "neurons" / name) for name in d.sets}
    for i, (name, s) in enumerate(d.sets.items()):
        pair = torch.cat([s.flat(), d.sets[pole_name(s.trait, opposite(s.pole))].flat()])
        # draw 0 is the single control of npti_lens 0.1; draw j has seed + 1000 j
        d.random_sets[name] = [
            random_control(s, seed=cfg.seed + i + 1000 * j, exclude=pair) for j in range(cfg.control_draws)
        ]


def _held_out(d: _Demo) -> None:
    """Every trait's held-out questions under no intervention, P2 (the judge's positive control),
    NPTI and its random controls at every gamma, and the other methods asked for."""
    from tqdm.auto import tqdm

    split = corpus.question_split()
    bar = tqdm(total=len(d.traits) * len(POLES), desc="answer held-out", unit="pole", disable=not d.progress)
    for t in d.traits:
        _trait(d, t, split[t]["test"][: d.cfg.n_test], bar)
    bar.close()
    d.control = Control(d.controls, judge={"name": "organism"})


def _toward(answered: list[dict[str, Any]], trait: str, pole: str) -> list[float]:
    return [attribute(r["answer"], trait, pole)["target_fraction"] for r in answered]


def _trait(d: _Demo, t: str, qs: list[Any], bar: Any) -> None:
    cfg, proto = d.cfg, d.proto
    plain = d.ask(qs, Condition.none())
    persona = {}  # P2: the judge's positive control, always answered
    for p in POLES:
        descs = p2_descriptions({(t, p): corpus.personas(t, p)}, t, p, len(qs), cfg.seed)
        persona[p] = d.ask(qs, Condition.baseline("p2", t, p, descs))
    seen = trait_control(t, {"none": {p: _toward(plain, t, p) for p in POLES},
                             **{c: {p: _toward(persona[c], t, p) for p in POLES} for c in POLES}}, seed=cfg.seed)  # fmt: skip
    d.controls[t] = seen
    for p in POLES:
        bar.update(1)
        (none,) = d.add(t, p, "none", None, plain)
        p2, sees = _toward(persona[p], t, p), seen.poles[p].sees
        target, opp = pole_name(t, p), pole_name(t, opposite(p))
        for g in d.gammas if "npti" in d.methods else []:
            icfg = proto.induce_config(gamma=g, seed=cfg.seed)
            (npti,) = d.add(t, p, "npti", g, d.ask(qs, Condition.npti([(d.sets[target], d.sets[opp])], icfg)))
            fluency = d.rows[-1]["fluency"]
            draws = [
                d.ask(qs, Condition.random([(c_t, c_o)], icfg, trait=t, pole=p))
                for c_t, c_o in zip(d.random_sets[target], d.random_sets[opp], strict=True)
            ]
            scores = d.add(t, p, "random", g, *draws)
            d.cells.append(evidence.cell(t, p, g, npti, none, scores, seed=cfg.seed, fluency=fluency, p2=p2,
                                         judge_sees=sees))  # fmt: skip
        for coef in d.coefs if "vector" in d.methods else []:
            vector = Condition.vector(d.vectors[target], coef, d.layers)
            (steered,) = d.add(t, p, "vector", coef, d.ask(qs, vector))
            fluency = d.rows[-1]["fluency"]
            draws = [
                d.ask(qs, Condition.vector(random_direction(d.vectors[target], seed=cfg.seed + 1000 * j), coef,
                                           d.layers, random=True))
                for j in range(cfg.control_draws)
            ]  # fmt: skip
            scores = d.add(t, p, "random-vector", coef, *draws)
            d.cells.append(evidence.cell(t, p, coef, steered, none, scores, seed=cfg.seed, method="vector",
                                         fluency=fluency, p2=p2, judge_sees=sees))  # fmt: skip
        if "simple" in d.methods:
            d.add(
                t,
                p,
                "simple",
                None,
                d.ask(qs, Condition.baseline("simple", t, p, [proto.adjective(t, p)] * len(qs))),
            )
        d.add(t, p, "persona", None, persona[p])


def _judge_cells(d: _Demo) -> None:
    for method in METHODS:  # one correction family per method: adding a method leaves the others' verdicts
        evidence.judge_cells([c for c in d.cells if c.method == method])


def _write(d: _Demo) -> dict[str, Path]:
    from npti_lens.evaluation.curves import evidence_forest
    from npti_lens.evaluation.figures import gamma_sweep, method_comparison

    out, cells, rows = d.out, d.cells, d.rows
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
        files["json"],
        {"config": asdict(d.cfg), "rows": rows, "neurons": {k: len(v) for k, v in d.sets.items()}},
    )
    write_jsonl_atomic(files["generations"], d.generations)
    gamma_sweep(rows, files["figure"])
    for method, key in (("npti", "cells"), ("vector", "vector_cells")):
        if any(c.method == method for c in cells):
            evidence_forest(evidence.to_rows([c for c in cells if c.method == method]), files[key],
                            ylabel="target-pole fraction")  # fmt: skip
        else:
            del files[key]
    method_comparison(
        [
            {**r, "score": r["target"], **({"gamma": None} if r["condition"] == "vector" else {})}
            for r in rows
            if r["condition"] != "vector" or r["gamma"] == d.cfg.compare_coef
        ],
        files["methods"],
        gamma=d.cfg.compare_gamma,
        ylabel="target-pole fraction",
    )
    assert d.control is not None  # set by _held_out
    d.control.save(out)
    return files


def summary_lines(result: DemoResult) -> list[str]:
    """Mean over traits and poles per condition: the headline of the demo."""
    keyed: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for r in result.rows:
        keyed.setdefault((r["condition"], r["gamma"]), []).append(r)
    lines = []
    for (cond, g), rs in keyed.items():
        label = cond if g is None else f"{cond} gamma={g:g}"
        lines.append(
            f"{label:<22} target {mean(r['target'] for r in rs):.3f}  opposite {mean(r['opposite'] for r in rs):.3f}  "
            f"fluency {mean(r['fluency'] for r in rs):.3f}"
        )
    return lines
