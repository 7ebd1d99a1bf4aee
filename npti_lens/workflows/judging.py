"""Workflow: the offline judge's own training answers, and its positive control.

`make_judge_data` answers each search question K times per pole, each time under another persona
description (drawn without replacement), with the P2 template by default: the kind of text the
positive control then asks the judge to read, on questions it never saw. The folder it writes
reads like a search run (`run.json`, `answers/{Trait}_{pole}.jsonl`), so `npti judge train`
takes it as it takes a run. On an engine every answer set is one batch.

`run_control` answers held-out questions with no prompt and with the P2 prompt of each pole (one
description per question, drawn as the demo draws it), scores them with the judge, and measures
the positive control (`npti_lens.evaluation.control`). The real-model demo and `npti judge control` both call it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from npti_lens.core.constants import ANSWERS_DIR, POLES, RUN_CFG_FILE, VERSION, pole_name
from npti_lens.core.errors import UserError
from npti_lens.core.files import read_json, write_json_atomic
from npti_lens.evaluation.control import CONDITIONS, Control, trait_control
from npti_lens.inputs.questions import questions_fingerprint
from npti_lens.judges.registry import Judge, score_rows
from npti_lens.method.protocol import Protocol, protocol_for
from npti_lens.model.load import Model, model_id
from npti_lens.workflows.answers import AnswerJob, Condition, answer_sets

DATA_KIND = "npti_lens.judge_data"


@dataclass
class JudgeDataConfig:
    per_question: int = field(
        default=8, metadata={"help": "answers per question and pole, each under another persona description"}
    )
    stage: str = field(
        default="p2", metadata={"help": "the template: p2 (as the positive control) or search"}
    )
    max_new_tokens: int = field(default=48, metadata={"help": "tokens per answer"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward (TL engine)"})
    seed: int = field(default=0, metadata={"help": "seed of the persona draws"})


def distinct_personas(descs: Sequence[str], k: int, *, seed: int, key: str) -> list[str]:
    """`k` different descriptions, drawn without replacement (seeded by `key`)."""
    if k > len(descs):
        raise UserError(
            f"--per-question: {k} distinct descriptions asked, the persona file has {len(descs)} for {key}"
        )
    return random.Random(f"{seed}:judge-data:{key}").sample(list(descs), k)


def make_judge_data(
    model: Model,
    questions: dict[str, list[Any]],
    personas: dict[tuple[str, str], list[str]],
    out: str | Path,
    cfg: JudgeDataConfig | None = None,
    *,
    protocol: Protocol | str | None = None,
    progress: bool = False,
) -> Path:
    """Answer every question `cfg.per_question` times per pole into `out` (resumes per trait pole)."""
    cfg = cfg or JudgeDataConfig()
    if cfg.per_question < 1:
        raise UserError(f"{cfg.per_question} is not 1 or more", field="per_question")
    if cfg.stage not in ("p2", "search"):
        raise UserError(f"--stage: {cfg.stage!r} is not p2 or search")
    proto = protocol_for(model, protocol)
    out = Path(out)
    meta = {
        "kind": DATA_KIND,
        "npti_lens": VERSION,
        "model": model_id(model),
        "protocol": proto.name,
        "protocol_hash": proto.hash,
        "stage": cfg.stage,
        "config": asdict(cfg),
        "questions": {t: questions_fingerprint(qs) for t, qs in questions.items()},
    }
    if (out / RUN_CFG_FILE).is_file():
        held = read_json(out / RUN_CFG_FILE)
        if {k: v for k, v in held.items() if k != "questions"} != {
            k: v for k, v in meta.items() if k != "questions"
        }:
            raise UserError(
                f"--out: {out} holds judge data of another model or config; choose another folder"
            )
        meta["questions"] = {**held.get("questions", {}), **meta["questions"]}
    jobs = []
    for t, qs in questions.items():
        for p in POLES:
            draws = [distinct_personas(personas[(t, p)], cfg.per_question, seed=cfg.seed, key=f"{t}:{p}:{q}")
                     for q in (getattr(x, "text", x) for x in qs)]  # fmt: skip
            asked = [q for q in qs for _ in range(cfg.per_question)]
            descs = [d for ds in draws for d in ds]
            cond = (Condition.search(t, p, descs) if cfg.stage == "search"
                    else Condition.baseline("p2", t, p, descs, extra={"persona_draw": "distinct"}))  # fmt: skip
            gcfg = proto.generate_config(
                cfg.stage, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size
            )
            jobs.append(AnswerJob(pole_name(t, p), asked, cond, gcfg))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RUN_CFG_FILE, meta)
    answer_sets(model, jobs, out / ANSWERS_DIR, protocol=proto, progress=progress)
    return out


def p2_descriptions(
    personas: dict[tuple[str, str], list[str]], trait: str, pole: str, n: int, seed: int
) -> list[str]:
    """One description per held-out question for the P2 prompt, as the demos draw them."""
    rng = random.Random(f"{seed}:demo-persona:{trait}:{pole}")
    return [rng.choice(personas[(trait, pole)]) for _ in range(n)]


def control_jobs(
    questions: dict[str, list[Any]],
    personas: dict[tuple[str, str], list[str]],
    proto: Protocol,
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
) -> list[AnswerJob]:
    """The answer sets of the positive control: per trait none, P2 high and P2 low."""
    jobs = []
    for t, qs in questions.items():
        neutral = proto.generate_config("neutral", max_new_tokens=max_new_tokens, batch_size=batch_size)
        jobs.append(AnswerJob(f"{t}_none", qs, Condition.none(t), neutral))
        for p in POLES:
            descs = p2_descriptions(personas, t, p, len(qs), seed)
            gcfg = proto.generate_config("p2", max_new_tokens=max_new_tokens, batch_size=batch_size)
            jobs.append(AnswerJob(f"{pole_name(t, p)}_p2", qs, Condition.baseline("p2", t, p, descs), gcfg))
    return jobs


def p_high_toward(row: dict[str, Any], pole: str) -> float:
    """The classifier's score of a row toward `pole` (P(high) or 1 - P(high))."""
    return float(row["p_high"]) if pole == "high" else 1.0 - float(row["p_high"])


def control_from(
    scored: dict[str, list[dict[str, Any]]],
    traits: Sequence[str],
    toward: Callable[[dict[str, Any], str], float] = p_high_toward,
    *,
    seed: int = 0,
    judge: dict[str, Any] | None = None,
) -> Control:
    """The control of `traits` from scored answer sets keyed as `control_jobs` keys them."""
    keys = {"none": "{t}_none", "high": "{t}_high_p2", "low": "{t}_low_p2"}
    out = {}
    for t in traits:
        sets = {c: scored[keys[c].format(t=t)] for c in CONDITIONS}
        qs = [r["question"] for r in sets["none"]]
        if any([r["question"] for r in rows] != qs for rows in sets.values()):
            raise UserError(f"{t}: the control's answer sets hold different questions")
        tw = {c: {p: [toward(r, p) for r in rows] for p in POLES} for c, rows in sets.items()}
        out[t] = trait_control(t, tw, seed=seed)
    return Control(out, judge=judge or {})


def run_control(
    model: Model,
    judge: Judge,
    questions: dict[str, list[Any]],
    personas: dict[tuple[str, str], list[str]],
    folder: str | Path,
    *,
    protocol: Protocol | str | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    seed: int = 0,
    tl_model: Any = None,
    progress: bool = False,
) -> tuple[Control, dict[str, list[dict[str, Any]]]]:
    """Answer (or read back) the control's sets in `folder`, score them, measure the control."""
    proto = protocol_for(model, protocol)
    jobs = control_jobs(
        questions, personas, proto, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed
    )
    got = answer_sets(model, jobs, folder, protocol=proto, tl_model=tl_model, progress=progress)
    flat = [r for j in jobs for r in got[j.key]]
    rows = score_rows(flat, judge)
    scored, start = {}, 0
    for j in jobs:
        scored[j.key] = rows[start : start + len(got[j.key])]
        start += len(got[j.key])
    record = {"name": judge.name, **({"reader": judge.clf.reader} if hasattr(judge, "clf") else {})}
    return control_from(scored, list(questions), seed=seed, judge=record), scored


def check_control_questions(judge_cfg: dict, questions: dict) -> None:
    """Refuse a trait the judge lacks, and a control on questions it was trained on (proving nothing)."""
    from npti_lens.judges.classifier import question_key

    for t, qs in questions.items():
        if t not in judge_cfg.get("traits", []):
            raise UserError(
                f"JUDGE: not trained on {t} (it knows {', '.join(judge_cfg.get('traits', []))}); "
                f"train it with npti judge train ... --traits {t}, or pass --traits"
            )
        seen = set(judge_cfg.get("questions", {}).get(t, []))
        overlap = [q for q in qs if question_key(q.text) in seen]
        if overlap:
            raise UserError(
                f"--questions: {len(overlap)} of the {len(qs)} {t} questions are among the judge's training "
                f"questions (first: {overlap[0].source}); a control on them proves nothing: use held-out questions"
            )


def judge_cfg(folder: str | Path) -> dict:
    """A classifier folder's cfg.json (Classifier.load checks the rest)."""
    from npti_lens.core.constants import CFG_FILE
    from npti_lens.judges.classifier import KIND

    path = Path(folder) / CFG_FILE
    if not path.is_file():
        raise UserError(
            f"JUDGE: {folder} holds no classifier ({CFG_FILE} missing); make one with npti judge train"
        )
    cfg = read_json(path)
    if not isinstance(cfg, dict) or cfg.get("kind") != KIND:
        raise UserError(f"JUDGE: {path} is not a classifier's; make one with npti judge train")
    return cfg
