"""`npti demo --model smollm2`: the paper's protocol on a real model, offline, with per-cell evidence.

The released templates, sampling, keep rule and clamp order (protocol `npti`; answers capped at
`max_new_tokens`). Search on the shipped questions (48 per trait, situational, over the six facets)
with the shipped persona descriptions; select with the paper's rule; train the offline trait
classifier on the run's persona answers (its held-out validity beside every table). Then, per trait
pole, on 24 held-out questions never used in search: no intervention, a strength sweep of NPTI's
gamma from which the strongest effect whose mean fluency stays above a floor is chosen (the paper's
gamma 1 is one point of the sweep), k random-neuron controls at the chosen gamma, optionally the
direction baseline (swept and chosen the same way, with random directions as its controls), and
the simple and P2 prompts. Every answer is scored by the classifier (P of the cell's pole) and the
offline fluency (repeats and perplexity under the unmodified model).

Every answer set is written as soon as it exists (`answers/*.jsonl`), so a killed demo resumes.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from npti_lens import evidence
from npti_lens.answers import Condition, answer, read_answers, write_answers
from npti_lens.bench import load_personas, load_questions, trait_question_file
from npti_lens.classifier import Classifier, ClassifierJudge, train
from npti_lens.constants import POLES, opposite, pole_name
from npti_lens.errors import UserError
from npti_lens.evidence import Cell
from npti_lens.induction import random_control
from npti_lens.io import parse_numbers, parse_traits, read_json, to_csv, write_json_atomic
from npti_lens.model import Model, is_engine, model_id
from npti_lens.protocol import load_protocol
from npti_lens.score import score_rows
from npti_lens.search import SearchConfig, run_search
from npti_lens.select import SelectConfig, select_run

DATA = Path(__file__).parent / "data"
QUESTIONS = DATA / "questions"  # 48 search and 24 test questions per trait, written for npti_lens
PERSONAS = DATA / "sample" / "personas.jsonl"
RESULTS_CSV = "demo_results.csv"
STATE_FILE = "demo.json"


@dataclass
class RealDemoConfig:
    traits: str = field(default="all", metadata={"help": "'all' or comma-separated trait names"})
    n_search: int = field(default=48, metadata={"help": "search questions per trait (at most 48 shipped)"})
    n_test: int = field(default=24, metadata={"help": "held-out questions per trait (at most 24 shipped)"})
    max_new_tokens: int = field(default=48, metadata={"help": "tokens per answer, search and test"})
    gammas: str = field(default="0.5,1", metadata={"help": "NPTI strengths swept (1: the paper's)"})
    fluency_floor: float = field(
        default=0.8, metadata={"help": "choose the strongest effect whose mean fluency is at least this"}
    )
    control_draws: int = field(default=2, metadata={"help": "random-neuron controls per pole"})
    min_neurons: int = field(
        default=2000, metadata={"help": "selection: keep at least this many per pole (the paper's)"}
    )
    threshold: float = field(
        default=0.1, metadata={"help": "selection: keep every neuron with diff >= this (the paper's)"}
    )
    methods: str = field(
        default="npti,simple,p2",
        metadata={"help": "npti, vector (direction baseline, TL engine), simple, p2"},
    )
    vector_coefs: str = field(default="2,4,8", metadata={"help": "coefficients of the vector swept"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward"})
    seed: int = field(default=0, metadata={"help": "seed of personas, masks and controls"})


def strongest_fluent(points: list[dict[str, Any]], floor: float) -> dict[str, Any] | None:
    """The point of largest effect whose fluency is >= floor (ties: the smaller strength): `tune.choose`
    without a capability limit."""
    from npti_lens.tune import choose

    return choose([{**p, "delta_nll": 0.0} for p in points], floor, math.inf)


def _searched(run: Path, trait: str, pole: str) -> bool:
    """True when the run's statistics of this pole are complete (select_run checks them whole)."""
    from npti_lens.constants import STATS_DIR

    meta = run / STATS_DIR / f"{pole_name(trait, pole)}.json"
    try:
        return bool(read_json(meta).get("complete"))
    except (UserError, AttributeError):
        return False


def _sans_traits(state: Any) -> Any:
    if isinstance(state, dict) and isinstance(state.get("config"), dict):
        return {**state, "config": {k: v for k, v in state["config"].items() if k != "traits"}}
    return state


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


@dataclass
class RealDemoResult:
    rows: list[dict[str, Any]]
    cells: list[Cell]
    choices: list[dict[str, Any]]
    validity: dict[str, Any]
    out: Path
    files: dict[str, Path]

    def table(self) -> str:
        head = f"{'trait':<18}{'pole':<6}{'condition':<15}{'strength':>9}{'P(pole)':>9}{'fluency':>9}{'degen.':>8}{'n':>4}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            g = "" if r["strength"] is None else f"{r['strength']:g}"
            lines.append(
                f"{r['trait']:<18}{r['pole']:<6}{r['condition']:<15}{g:>9}{r['target']:>9.3f}"
                f"{r['fluency']:>9.3f}{r['degenerate']:>8.2f}{r['n']:>4}"
            )
        return "\n".join(lines)

    def evidence_table(self) -> str:
        head = f"{'method':<8}{'trait':<18}{'pole':<6}{'strength':>9}{'none':>7}{'induced':>8}{'control':>8}{'vs none [95% CI]':>24}{'vs control [95% CI]':>24}{'fluency':>8}  verdict"
        lines = [head, "-" * len(head)]
        for c in self.cells:
            vs_none = f"{c.diff_none:+.2f} [{c.ci_none_low:+.2f}, {c.ci_none_high:+.2f}]"
            vs_ctrl = f"{c.diff_control:+.2f} [{c.ci_control_low:+.2f}, {c.ci_control_high:+.2f}]"
            lines.append(
                f"{c.method:<8}{c.trait:<18}{c.pole:<6}{c.gamma:>9g}{c.none:>7.2f}{c.npti:>8.2f}{c.control:>8.2f}"
                f"{vs_none:>24}{vs_ctrl:>24}{c.fluency:>8.2f}  {c.verdict}"
            )
        return "\n".join(lines)


def run_real_demo(
    model: Model, cfg: RealDemoConfig, out: str | Path, *, tl_model: Any = None, progress: bool = False
) -> RealDemoResult:
    """The demo on `model` (a TransformerBridge or a VLLMEngine); `tl_model`: a TransformerBridge of
    the same weights for the vector baseline when `model` is an engine."""
    out = Path(out)
    traits = parse_traits(cfg.traits)
    gammas = parse_numbers(cfg.gammas, "--gammas")
    coefs = parse_numbers(cfg.vector_coefs, "--vector-coefs")
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    bad = sorted(set(methods) - {"npti", "vector", "simple", "p2"})
    if bad or "npti" not in methods:
        raise UserError(f"{cfg.methods!r}: npti plus any of vector, simple, p2", field="methods")
    if cfg.control_draws < 1:
        raise UserError(f"{cfg.control_draws} is not 1 or more", field="control_draws")
    steer_model = model
    if "vector" in methods and is_engine(model):
        if tl_model is None:
            raise UserError(
                "the vector baseline runs on the TL engine: drop vector from --methods or use --engine tl"
            )
        steer_model = tl_model
    questions = {
        t: (
            load_questions(trait_question_file(QUESTIONS / "search", t))[: cfg.n_search],
            load_questions(trait_question_file(QUESTIONS / "test", t))[: cfg.n_test],
        )
        for t in traits
    }
    personas = load_personas(PERSONAS, traits)
    proto = load_protocol("npti")
    # every answer set depends on the whole config but the trait list: a demo may be continued, or
    # tabled, for some of its traits
    state = {"config": {k: v for k, v in asdict(cfg).items() if k != "traits"}, "model": model_id(model),
             "protocol_hash": proto.hash}  # fmt: skip
    if (out / STATE_FILE).is_file() and _sans_traits(read_json(out / STATE_FILE)) != state:
        raise UserError(
            f"--out: {out} holds a demo of another model or config; pass --overwrite or another folder"
        )
    write_json_atomic(out / STATE_FILE, state)

    # search (resumes), select (the paper's rule), the classifier (held-out by question)
    qdir = out / "data" / "search"
    qdir.mkdir(parents=True, exist_ok=True)
    for t in traits:
        lines = "".join(json.dumps({"question": q.text}) + "\n" for q in questions[t][0])
        (qdir / f"{t}.json").write_text(lines, encoding="utf-8")
    gcfg_search = proto.generate_config(
        "search", max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size
    )
    if not all(_searched(out / "run", t, p) for t in traits for p in POLES):
        # a demo tabled again for some of its traits finds them searched (the run's identity holds
        # the personas of every trait it searched, which a subset would not match)
        run_search(model, qdir, PERSONAS, out / "run", SearchConfig(traits=cfg.traits, seed=cfg.seed),
                   gcfg_search, protocol=proto, resume=True, progress=progress)  # fmt: skip
    sets = select_run(
        out / "run", out / "neurons", SelectConfig(min_neurons=cfg.min_neurons, threshold=cfg.threshold)
    )
    clf_dir = out / "classifier"
    clf = Classifier.load(clf_dir) if (clf_dir / "cfg.json").is_file() else None
    if clf is None or set(traits) - set(clf.traits):
        clf = train(out / "run", clf_dir, traits)
    judge = ClassifierJudge(clf, model=model)  # fluency: perplexity under the unmodified model
    vectors = {}
    if "vector" in methods:
        from npti_lens.directions import Direction

        vectors = {name: Direction.load(out / "neurons" / name) for name in sets}

    adir = out / "answers"
    adir.mkdir(exist_ok=True)

    def scored(key: str, cond: Condition, qs: list[Any], on: Any = None) -> list[dict[str, Any]]:
        """Answers of `cond` (from `answers/key.jsonl` when a killed demo left them), scored."""
        path = adir / f"{key}.jsonl"
        if path.is_file():
            rows = [{k: v for k, v in r.items() if k != "_line"} for r in read_answers(path)]
        else:
            # each stage's released sampling (neutral for inductions), answers capped at max_new_tokens
            gcfg = proto.generate_config(
                cond.stage, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size
            )
            rows = answer(on or model, qs, cond, gcfg, protocol=proto, progress=False)
            write_answers(path, rows)
        return score_rows(rows, judge)

    rows: list[dict[str, Any]] = []
    cells: list[Cell] = []
    choices: list[dict[str, Any]] = []
    generations: list[dict[str, Any]] = []

    def toward(sc: list[dict[str, Any]], pole: str) -> list[float]:
        """P(pole) per answer, whatever pole (if any) the row was answered under."""
        return [r["p_high"] if pole == "high" else 1 - r["p_high"] for r in sc]

    def add(trait: str, pole: str, condition: str, strength: float | None, sc: list[dict[str, Any]]) -> None:
        rows.append({
            "trait": trait, "pole": pole, "condition": condition, "strength": strength,
            "target": _mean(toward(sc, pole)), "fluency": _mean([r["fluency"] for r in sc]),
            "degenerate": _mean([float(r["degenerate"]) for r in sc]), "n": len(sc),
        })  # fmt: skip
        generations.extend({**r, "demo_condition": condition, "demo_pole": pole} for r in sc)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(traits) * len(POLES), desc="demo cells", unit="pole", disable=not progress)
    for ti, t in enumerate(traits):
        test = questions[t][1]
        plain = scored(f"{t}_none", Condition.none(t), test)
        for p in POLES:
            bar.update(1)
            none = toward(plain, p)
            add(t, p, "none", None, plain)
            target, opp = sets[pole_name(t, p)], sets[pole_name(t, opposite(p))]
            points = []
            for g in gammas:
                icfg = proto.induce_config(gamma=g, seed=cfg.seed)
                sc = scored(f"{pole_name(t, p)}_npti_{g:g}", Condition.npti([(target, opp)], icfg), test)
                add(t, p, "npti", g, sc)
                s = toward(sc, p)
                points.append({"strength": g, "scores": s, "rows": sc, "effect": _mean(s) - _mean(none),
                               "fluency": rows[-1]["fluency"]})  # fmt: skip
            pick = strongest_fluent(points, cfg.fluency_floor)
            choices.append({"trait": t, "pole": p, "method": "npti", "chosen": None if pick is None else pick["strength"],
                            **{f"fluency_at_{pt['strength']:g}": pt["fluency"] for pt in points}})  # fmt: skip
            if pick is not None:
                g = pick["strength"]
                icfg = proto.induce_config(gamma=g, seed=cfg.seed)
                pair = torch.cat([target.flat(), opp.flat()])
                draws, all_rows = [], []
                for j in range(cfg.control_draws):
                    ct = random_control(target, seed=cfg.seed + 2 * ti + 1000 * (j + 1), exclude=pair)
                    co = random_control(opp, seed=cfg.seed + 2 * ti + 1 + 1000 * (j + 1), exclude=pair)
                    cond = Condition.random([(ct, co)], icfg, trait=t, pole=p)
                    sc = scored(f"{pole_name(t, p)}_random_{g:g}_{j}", cond, test)
                    draws.append(toward(sc, p))
                    all_rows += sc
                add(t, p, "random", g, all_rows)
                cells.append(
                    evidence.cell(
                        t, p, g, pick["scores"], none, draws, seed=cfg.seed, fluency=pick["fluency"]
                    )
                )
            if "vector" in methods:
                _vector_cells(t, p, vectors[pole_name(t, p)], coefs, none, test, cfg, scored, add, toward,
                              rows, cells, choices, steer_model)  # fmt: skip
            if "simple" in methods:
                add(t, p, "simple", None, scored(f"{pole_name(t, p)}_simple",
                    Condition.baseline("simple", t, p, [proto.adjective(t, p)] * len(test)), test))  # fmt: skip
            if "p2" in methods:
                rng = random.Random(f"{cfg.seed}:demo-persona:{t}:{p}")
                descs = [rng.choice(personas[(t, p)]) for _ in test]
                add(
                    t,
                    p,
                    "p2",
                    None,
                    scored(f"{pole_name(t, p)}_p2", Condition.baseline("p2", t, p, descs), test),
                )
    bar.close()
    for method in ("npti", "vector"):
        evidence.judge_cells([c for c in cells if c.method == method])
    validity = _validity(clf, rows, generations, traits)
    files = _write(out, rows, cells, choices, validity, generations)
    return RealDemoResult(rows, cells, choices, validity, out, files)


def _vector_cells(t, p, direction, coefs, none, test, cfg, scored, add, toward, rows, cells, choices, on):  # noqa: ANN001, ANN202
    from npti_lens.directions import random_direction

    points = []
    for c in coefs:
        sc = scored(f"{pole_name(t, p)}_vector_{c:g}", Condition.vector(direction, c), test, on)
        add(t, p, "vector", c, sc)
        s = toward(sc, p)
        points.append(
            {"strength": c, "scores": s, "effect": _mean(s) - _mean(none), "fluency": rows[-1]["fluency"]}
        )
    pick = strongest_fluent(points, cfg.fluency_floor)
    choices.append(
        {"trait": t, "pole": p, "method": "vector", "chosen": None if pick is None else pick["strength"]}
    )
    if pick is None:
        return
    draws, all_rows = [], []
    for j in range(cfg.control_draws):
        rand = random_direction(direction, seed=cfg.seed + 1000 * (j + 1))
        sc = scored(f"{pole_name(t, p)}_random-vector_{pick['strength']:g}_{j}",
                    Condition.vector(rand, pick["strength"], random=True), test, on)  # fmt: skip
        draws.append(toward(sc, p))
        all_rows += sc
    add(t, p, "random-vector", pick["strength"], all_rows)
    cells.append(evidence.cell(t, p, pick["strength"], pick["scores"], none, draws, seed=cfg.seed,
                               method="vector", fluency=pick["fluency"]))  # fmt: skip


def _validity(
    clf: Classifier, rows: list[dict[str, Any]], gens: list[dict[str, Any]], traits: list[str]
) -> dict[str, Any]:
    """The classifier's held-out figures and its accuracy on P2 answers to the test questions."""
    out: dict[str, Any] = {}
    for t in traits:
        p2 = [g for g in gens if g["demo_condition"] == "p2" and g.get("trait") == t]
        right = [(g["p_high"] >= 0.5) == (g["demo_pole"] == "high") for g in p2]
        out[t] = {**clf.cfg["validity"][t], "p2_accuracy": _mean([float(x) for x in right]), "p2_n": len(p2)}
    return out


def _write(out: Path, rows, cells, choices, validity, generations) -> dict[str, Path]:  # noqa: ANN001
    from npti_lens.figures import evidence_forest
    from npti_lens.io import write_jsonl_atomic, write_text_atomic

    files = {
        "csv": out / RESULTS_CSV,
        "evidence": out / "demo_evidence.csv",
        "choices": out / "demo_choices.csv",
        "validity": out / "judge_validity.json",
        "generations": out / "demo_generations.jsonl",
        "cells": out / "evidence.png",
    }
    write_text_atomic(files["csv"], to_csv(rows))
    write_text_atomic(files["evidence"], to_csv(evidence.to_rows(cells)))
    write_text_atomic(files["choices"], to_csv(choices))
    write_json_atomic(files["validity"], validity)
    write_jsonl_atomic(files["generations"], generations)
    if any(c.method == "npti" for c in cells):
        evidence_forest(evidence.to_rows([c for c in cells if c.method == "npti"]), files["cells"],
                        ylabel="P(pole), offline classifier")  # fmt: skip
    else:
        del files["cells"]
    return files
