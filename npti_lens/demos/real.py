"""`npti demo --model smollm2`: the paper's protocol on a real model, offline, with per-cell evidence
that says what its judge can see.

The released templates, sampling, keep rule and clamp order (protocol `npti`; answers capped at
`max_new_tokens`). The demo runs as stages over one shared state (`_Demo`):

1. search on the shipped questions (48 per trait) with the shipped persona descriptions; select
   with the paper's rule;
2. the judge: one trained elsewhere (`--judge DIR`), or the demo's own, trained on `judge_answers`
   P2 answers per search question and pole, each under another persona description
   (`npti_lens.workflows.judging`), with the `reader` chosen;
3. on 24 held-out questions per trait (never searched, never trained on): no intervention, the
   simple and the P2 prompt;
4. the positive control (`npti_lens.evaluation.control`): does the judge see P2 on these questions? A pole it
   does not see gets `judge blind` for every cell;
5. the dose-response: NPTI's gamma walked up the ladder `gammas` per pole, with `control_draws`
   random-neuron controls at every strength, until the mean fluency falls below `fluency_floor`
   (the vector baseline on its own ladder, with random directions, where asked); the strength
   chosen is the one of largest effect whose fluency holds;
6. per cell, at the chosen strength: evidence against no intervention and the controls, with its
   minimum detectable effect and NPTI's effect as a share of P2's.

On an engine (vLLM) every stage's answer sets go out as one batch of mixed conditions. Every answer
set is written as soon as it exists (`answers/*.jsonl`), so a killed demo resumes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from npti_lens.core.averages import mean
from npti_lens.core.constants import POLES, pole_name
from npti_lens.core.errors import UserError
from npti_lens.core.files import parse_numbers, parse_traits, read_json, write_json_atomic
from npti_lens.demos.dose import cells_at_chosen, sweep
from npti_lens.evaluation.evidence import Cell
from npti_lens.inputs import DATA_DIR
from npti_lens.inputs.questions import load_personas, load_questions, trait_question_file
from npti_lens.judges.classifier import Classifier, ClassifierConfig, ClassifierJudge, train
from npti_lens.judges.registry import score_rows
from npti_lens.method.protocol import load_protocol
from npti_lens.method.selection import SelectConfig, select_run
from npti_lens.model.load import Model, is_engine, model_id
from npti_lens.workflows.answers import AnswerJob, Condition, answer_sets
from npti_lens.workflows.judging import (
    JudgeDataConfig,
    check_control_questions,
    control_from,
    control_jobs,
    make_judge_data,
    p_high_toward,
)
from npti_lens.workflows.search import SearchConfig, run_search

DATA = DATA_DIR
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
    gammas: str = field(
        default="0.5,1,2,4,8,16",
        metadata={
            "help": "NPTI's strengths, walked upward per pole until the fluency falls below the floor (1: the paper's)"
        },
    )
    fluency_floor: float = field(
        default=0.8,
        metadata={"help": "stop the sweep below this mean fluency; choose the largest effect at or above it"},
    )
    control_draws: int = field(default=2, metadata={"help": "random-neuron controls per pole and strength"})
    min_neurons: int = field(
        default=2000, metadata={"help": "selection: keep at least this many per pole (the paper's)"}
    )
    threshold: float = field(
        default=0.1, metadata={"help": "selection: keep every neuron with diff >= this (the paper's)"}
    )
    methods: str = field(
        default="npti,simple,p2",
        metadata={
            "help": "npti, vector (direction baseline, TL engine), simple, p2 (always answered: the judge's control)"
        },
    )
    vector_coefs: str = field(
        default="2,4,8,16,32", metadata={"help": "the vector's coefficients, walked like gammas"}
    )
    batch_size: int = field(default=32, metadata={"help": "prompts per forward (TL engine)"})
    seed: int = field(default=0, metadata={"help": "seed of personas, masks and controls"})
    judge: str | None = field(
        default=None,
        metadata={"help": "a judge trained elsewhere (npti judge train --out); default: train one here"},
    )
    judge_answers: int = field(
        default=4,
        metadata={"help": "the demo's own judge: P2 answers per search question and pole, distinct personas"},
    )
    reader: str = field(
        default="tfidf", metadata={"help": "the demo's own judge's reader: tfidf, encoder, hidden"}
    )
    encoder: str | None = field(
        default=None, metadata={"help": "reader encoder: a folder of HF weights, or minilm"}
    )


def needs_tl(cfg: RealDemoConfig) -> bool:
    """Whether the demo needs the TL loop beside an engine: the vector baseline, or a hidden-state judge."""
    from npti_lens.workflows.judging import judge_cfg

    reader = judge_cfg(cfg.judge).get("reader", {}).get("kind") if cfg.judge else cfg.reader
    return "vector" in cfg.methods or reader == "hidden"


def _searched(run: Path, trait: str, pole: str) -> bool:
    """True when the run's statistics of this pole are complete (select_run checks them whole)."""
    from npti_lens.core.constants import STATS_DIR

    meta = run / STATS_DIR / f"{pole_name(trait, pole)}.json"
    try:
        return bool(read_json(meta).get("complete"))
    except (UserError, AttributeError):
        return False


def _sans_traits(state: Any) -> Any:
    if isinstance(state, dict) and isinstance(state.get("config"), dict):
        return {**state, "config": {k: v for k, v in state["config"].items() if k != "traits"}}
    return state


@dataclass
class RealDemoResult:
    rows: list[dict[str, Any]]
    cells: list[Cell]
    choices: list[dict[str, Any]]
    validity: dict[str, Any]
    out: Path
    files: dict[str, Path]
    control: Any = None  # npti_lens.evaluation.control.Control

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
        from npti_lens.evaluation.report import evidence_table

        return evidence_table(self.cells)


@dataclass
class _Demo:
    """What the stages share."""

    model: Model
    steer_model: Any
    cfg: RealDemoConfig
    out: Path
    traits: list[str]
    methods: list[str]
    proto: Any
    questions: dict[str, tuple[list[Any], list[Any]]]
    personas: dict[tuple[str, str], list[str]]
    progress: bool = False
    sets: dict[str, Any] = field(default_factory=dict)
    judge: Any = None
    scored: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    control: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    sweep: list[dict[str, Any]] = field(default_factory=list)  # one point per (pole, method, strength)
    cells: list[Cell] = field(default_factory=list)
    choices: list[dict[str, Any]] = field(default_factory=list)

    def test(self, trait: str) -> list[Any]:
        return self.questions[trait][1]

    def answer(self, jobs: list[AnswerJob]) -> None:
        """Answer (or read back) and score `jobs`, all at once: one engine batch, one scoring pass."""
        jobs = [j for j in jobs if j.key not in self.scored]
        if not jobs:
            return
        got = answer_sets(self.model, jobs, self.out / "answers", protocol=self.proto,
                          tl_model=self.steer_model if is_engine(self.model) else None, progress=self.progress)  # fmt: skip
        flat = score_rows([r for j in jobs for r in got[j.key]], self.judge)
        start = 0
        for j in jobs:
            self.scored[j.key] = flat[start : start + len(got[j.key])]
            start += len(got[j.key])

    def toward(self, key: str, pole: str) -> list[float]:
        """P(pole) per answer of a scored set, whatever pole (if any) it was answered under."""
        return [p_high_toward(r, pole) for r in self.scored[key]]

    def add_row(self, trait: str, pole: str, condition: str, strength: float | None, keys: list[str]) -> dict:
        rs = [r for k in keys for r in self.scored[k]]
        row = {"trait": trait, "pole": pole, "condition": condition, "strength": strength,
               "target": mean([x for k in keys for x in self.toward(k, pole)]),
               "fluency": mean([r["fluency"] for r in rs]),
               "degenerate": mean([float(r["degenerate"]) for r in rs]), "n": len(rs)}  # fmt: skip
        self.rows.append(row)
        return row

    def gcfg(self, stage: str) -> Any:
        return self.proto.generate_config(
            stage, max_new_tokens=self.cfg.max_new_tokens, batch_size=self.cfg.batch_size
        )


def run_real_demo(
    model: Model, cfg: RealDemoConfig, out: str | Path, *, tl_model: Any = None, progress: bool = False
) -> RealDemoResult:
    """The demo on `model` (a TransformerBridge or a VLLMEngine); `tl_model`: a TransformerBridge of
    the same weights for the vector baseline (and the hidden reader) when `model` is an engine."""
    demo = _setup(model, cfg, Path(out), tl_model, progress)
    for stage in (_search, _judge, _baselines, _control, sweep, cells_at_chosen):
        stage(demo)
    from npti_lens.demos.report import write_real

    files, validity = write_real(demo)
    return RealDemoResult(demo.rows, demo.cells, demo.choices, validity, demo.out, files, demo.control)


def _setup(model: Model, cfg: RealDemoConfig, out: Path, tl_model: Any, progress: bool) -> _Demo:
    traits = parse_traits(cfg.traits)
    for spec, flag in ((cfg.gammas, "--gammas"), (cfg.vector_coefs, "--vector-coefs")):
        if any(x <= 0 for x in parse_numbers(spec, flag)):
            raise UserError(f"{flag}: strengths are above 0 ({spec})")
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    bad = sorted(set(methods) - {"npti", "vector", "simple", "p2"})
    if bad or "npti" not in methods:
        raise UserError(f"{cfg.methods!r}: npti plus any of vector, simple, p2", field="methods")
    if cfg.control_draws < 1:
        raise UserError(f"{cfg.control_draws} is not 1 or more", field="control_draws")
    if cfg.judge is None and cfg.judge_answers < 1:
        raise UserError(f"{cfg.judge_answers} is not 1 or more", field="judge_answers")
    steer_model = model
    if needs_tl(cfg) and is_engine(model):
        if tl_model is None:
            raise UserError("the vector baseline and the hidden reader run on the TL engine: use --engine tl")
        steer_model = tl_model
    questions = {
        t: (
            load_questions(trait_question_file(QUESTIONS / "search", t))[: cfg.n_search],
            load_questions(trait_question_file(QUESTIONS / "test", t))[: cfg.n_test],
        )
        for t in traits
    }
    proto = load_protocol("npti")
    demo = _Demo(model, steer_model, cfg, out, traits, methods, proto, questions,
                  load_personas(PERSONAS, traits), progress)  # fmt: skip
    if cfg.judge is not None:
        clf = Classifier.load(cfg.judge, model=steer_model)
        check_control_questions(clf.cfg, {t: questions[t][1] for t in traits})
        demo.judge = ClassifierJudge(clf, model=model)
    # every answer set depends on the whole config but the trait list: a demo may be continued, or
    # tabled, for some of its traits
    state = {"config": {k: v for k, v in asdict(cfg).items() if k != "traits"}, "model": model_id(model),
             "protocol_hash": proto.hash}  # fmt: skip
    if (out / STATE_FILE).is_file() and _sans_traits(read_json(out / STATE_FILE)) != state:
        raise UserError(
            f"--out: {out} holds a demo of another model or config; pass --overwrite or another folder"
        )
    write_json_atomic(out / STATE_FILE, state)
    return demo


def _search(d: _Demo) -> None:
    """Search (resumes) and select with the paper's rule."""
    qdir = d.out / "data" / "search"
    qdir.mkdir(parents=True, exist_ok=True)
    for t in d.traits:
        lines = "".join(json.dumps({"question": q.text}) + "\n" for q in d.questions[t][0])
        (qdir / f"{t}.json").write_text(lines, encoding="utf-8")
    if not all(_searched(d.out / "run", t, p) for t in d.traits for p in POLES):
        # a demo tabled again for some of its traits finds them searched (the run's identity holds
        # the personas of every trait it searched, which a subset would not match)
        run_search(d.model, qdir, PERSONAS, d.out / "run", SearchConfig(traits=d.cfg.traits, seed=d.cfg.seed),
                   d.gcfg("search"), protocol=d.proto, resume=True, progress=d.progress)  # fmt: skip
    d.sets = select_run(
        d.out / "run",
        d.out / "neurons",
        SelectConfig(min_neurons=d.cfg.min_neurons, threshold=d.cfg.threshold),
    )


def _judge(d: _Demo) -> None:
    """The demo's own judge, on P2 answers to the search questions (unless --judge named one)."""
    if d.judge is not None:
        return
    folder = d.out / "judge"
    clf = None
    if (folder / "cfg.json").is_file():
        clf = Classifier.load(folder, model=d.steer_model)
        if set(d.traits) - set(clf.traits):
            clf = None
    if clf is None:
        data = make_judge_data(
            d.model, {t: d.questions[t][0] for t in d.traits}, d.personas, d.out / "judge_data",
            JudgeDataConfig(per_question=d.cfg.judge_answers, max_new_tokens=d.cfg.max_new_tokens,
                            batch_size=d.cfg.batch_size, seed=d.cfg.seed),
            protocol=d.proto, progress=d.progress,
        )  # fmt: skip
        ccfg = ClassifierConfig(reader=d.cfg.reader, encoder=d.cfg.encoder)
        clf = train(data, folder, d.traits, ccfg, model=d.steer_model)
    d.judge = ClassifierJudge(clf, model=d.model)  # fluency: perplexity under the unmodified model


def _baselines(d: _Demo) -> None:
    """No intervention, P2 (the judge's control) and the simple prompt on the held-out questions."""
    jobs = control_jobs({t: d.test(t) for t in d.traits}, d.personas, d.proto,
                        max_new_tokens=d.cfg.max_new_tokens, batch_size=d.cfg.batch_size, seed=d.cfg.seed)  # fmt: skip
    if "simple" in d.methods:
        for t in d.traits:
            for p in POLES:
                cond = Condition.baseline("simple", t, p, [d.proto.adjective(t, p)] * len(d.test(t)))
                jobs.append(AnswerJob(f"{pole_name(t, p)}_simple", d.test(t), cond, d.gcfg("simple")))
    d.answer(jobs)
    for t in d.traits:
        for p in POLES:
            d.add_row(t, p, "none", None, [f"{t}_none"])
            if "simple" in d.methods:
                d.add_row(t, p, "simple", None, [f"{pole_name(t, p)}_simple"])
            d.add_row(t, p, "p2", None, [f"{pole_name(t, p)}_p2"])


def _control(d: _Demo) -> None:
    d.control = control_from(
        d.scored, d.traits, seed=d.cfg.seed, judge={"name": d.judge.name, "reader": d.judge.clf.reader}
    )
    d.control.save(d.out)
