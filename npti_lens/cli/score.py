"""Judging commands: score an answers file with a judge; the offline judge's data, training and
positive control."""

from __future__ import annotations

import argparse

from npti_lens.cli._common import (
    PROTOCOL_HELP,
    Command,
    add_config,
    add_engine_flags,
    add_protocol_flag,
    close_engine,
    config_from,
    fresh_dir,
    load_model_for,
    protocol_of,
    writable_dir,
)
from npti_lens.core.errors import UserError


def score_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.judges.client import ChatConfig

    p.add_argument("generations", metavar="GEN.jsonl", help="output of npti generate / induce / baseline")
    p.add_argument("--out", required=True, help="folder for scores.jsonl and summary.csv")
    p.add_argument(
        "--judge",
        default="organism",
        help="organism; classifier (offline, trained by npti judge train); or openai (an OpenAI-compatible LLM judge)",
    )
    p.add_argument(
        "--classifier", default=None, help="--judge classifier: its folder (npti judge train --out)"
    )
    p.add_argument(
        "--fluency-model",
        default=None,
        help="--judge classifier: the unmodified model whose perplexity enters fluency (e.g. smollm2)",
    )
    p.add_argument("--trait", default=None, help="judge every row against this trait (default: the row's)")
    p.add_argument("--pole", default=None, help="judge every row against this pole (default: the row's)")
    p.add_argument("--overwrite", action="store_true", help="replace scores of another file already in --out")
    add_config(p, ChatConfig)  # --judge openai only; the key comes from OPENAI_API_KEY
    p.add_argument(
        "--protocol",
        default=None,
        help="--judge openai: the judge prompts of this protocol; " + PROTOCOL_HELP,
    )


def score(args: argparse.Namespace) -> None:
    from npti_lens.core.files import check_pole, check_trait
    from npti_lens.workflows.scoring import score_file

    kwargs: dict = {}
    if args.judge == "organism":
        from npti_lens.model.load import load_model

        kwargs["model"] = load_model("organism")
    elif args.judge == "openai":
        from npti_lens.judges.client import ChatConfig
        from npti_lens.method.protocol import load_protocol

        kwargs.update(cfg=config_from(args, ChatConfig), protocol=load_protocol(args.protocol))
    elif args.judge == "classifier":
        from npti_lens.judges.classifier import Classifier

        kwargs["classifier"] = Classifier.load(args.classifier) if args.classifier else None
        if args.fluency_model:
            from npti_lens.model.load import load_model

            kwargs["model"] = load_model(args.fluency_model)
    result = score_file(
        args.generations,
        args.out,
        args.judge,
        trait=check_trait(args.trait) if args.trait else None,
        pole=check_pole(args.pole) if args.pole else None,
        overwrite=args.overwrite,
        progress=True,
        **kwargs,
    )
    n, failed = len(result.scored), result.failed
    print(
        f"{n - failed} of {n} answers scored by the {result.judge.name} judge"
        f"{f', {failed} failed' if failed else ''} -> {result.scores}, {result.summary}"
    )
    report = getattr(result.judge, "report", None)
    if report is not None:
        print(report())
    for w in getattr(result.judge, "warnings", []):
        print(f"npti score: warning: {w}")
    if failed:
        raise UserError(
            f"{failed} of {n} answers lack a rating (see judge_error in {result.scores}); rerunning the "
            "same command retries the failed requests only and resends nothing already answered"
        )


def judge_train_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.judges.classifier import ClassifierConfig

    p.add_argument(
        "run",
        metavar="RUN",
        help="a search run folder (npti search --out) or judge data (npti judge data --out)",
    )
    p.add_argument("--out", required=True, help="folder for the classifier (cfg.json, safetensors)")
    p.add_argument("--traits", default="all", help="'all' or comma-separated traits of the run")
    p.add_argument("--overwrite", action="store_true", help="replace a classifier already in --out")
    p.add_argument(
        "--model", default=None, help="--reader hidden: the subject model whose hidden states are read"
    )
    add_config(p, ClassifierConfig)


def judge_train(args: argparse.Namespace) -> None:
    from npti_lens.core.constants import CFG_FILE
    from npti_lens.core.files import parse_traits
    from npti_lens.judges.classifier import ClassifierConfig, train
    from npti_lens.judges.readers import check_reader

    cfg = config_from(args, ClassifierConfig)
    check_reader(cfg.reader)
    if cfg.reader == "hidden" and not args.model:
        raise UserError(
            "--reader hidden: name the subject model with --model (the model the run answered with)"
        )
    out = fresh_dir(args.out, args.overwrite, holds=CFG_FILE)
    model = None
    if args.model:
        from npti_lens.model.load import load_model

        model = load_model(args.model)
    clf = train(args.run, out, parse_traits(args.traits), cfg, model=model, progress=True)
    for t, v in clf.cfg["validity"].items():
        curve = ", ".join(f"{c['n_answers']}: {c['auroc']:.3f}" for c in v["learning_curve"])
        print(
            f"{t:<18} held out by question ({v['folds']} folds, {v['n_questions']} questions, {v['n_answers']} answers): "
            f"accuracy {v['accuracy']:.3f}, AUROC {v['auroc']:.3f}, Brier {v['brier']:.3f}, ECE {v['ece']:.3f}; "
            f"learning curve (answers: AUROC) {curve}"
        )
    print(f"classifier ({cfg.reader}) -> {out}")


def _question_flags(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--questions", default=None,
                   help=f"folder of {{Trait}}.json question files (default: the shipped {split} questions)")  # fmt: skip
    p.add_argument("--personas", default=None, help="JSON-lines persona file (default: the shipped personas)")
    p.add_argument("--traits", default="all", help="'all' or comma-separated traits")
    p.add_argument("--n-questions", type=int, default=None, help="at most this many questions per trait")


def _questions(args: argparse.Namespace, split: str) -> tuple[dict, dict]:
    """Questions per trait and persona descriptions, every file checked before any model work."""
    from npti_lens.core.files import parse_traits
    from npti_lens.demos.real import PERSONAS, QUESTIONS
    from npti_lens.inputs.questions import load_personas, load_questions, trait_question_file

    traits = parse_traits(args.traits)
    folder = args.questions or QUESTIONS / split
    qs = {t: load_questions(trait_question_file(folder, t), limit=args.n_questions) for t in traits}
    return qs, load_personas(args.personas or PERSONAS, traits)


def judge_data_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.model.load import ModelConfig
    from npti_lens.workflows.judging import JudgeDataConfig

    p.add_argument(
        "--out", required=True, help="folder for run.json and answers/ (npti judge train reads it)"
    )
    _question_flags(p, "search")
    add_config(p, JudgeDataConfig)
    add_config(p, ModelConfig)
    add_engine_flags(p)
    add_protocol_flag(p)


def judge_data(args: argparse.Namespace) -> None:
    from npti_lens.workflows.judging import JudgeDataConfig, make_judge_data

    cfg = config_from(args, JudgeDataConfig)
    if cfg.per_question < 1:
        raise UserError(f"--per-question: {cfg.per_question} is not 1 or more")
    questions, personas = _questions(args, "search")
    for (t, p), descs in personas.items():
        if cfg.per_question > len(descs):
            raise UserError(
                f"--per-question: {cfg.per_question} distinct descriptions asked, the persona file has "
                f"{len(descs)} for {t} {p}"
            )
    out = writable_dir(args.out)  # judge data resumes per trait pole
    proto = protocol_of(args)
    model = load_model_for(args, proto)
    try:
        make_judge_data(model, questions, personas, out, cfg, protocol=proto, progress=True)
    finally:
        close_engine(model)
    n = sum(len(q) for q in questions.values()) * 2 * cfg.per_question
    print(f"{n} persona answers ({cfg.per_question} per question and pole, {cfg.stage} template) -> {out}")
    print(f"train a judge on them: npti judge train {out} --out JUDGE")


def judge_control_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.model.load import ModelConfig

    p.add_argument("judge", metavar="JUDGE", help="a classifier folder (npti judge train --out)")
    p.add_argument("--out", required=True, help="folder for answers/, scores.jsonl and control.json")
    _question_flags(p, "test")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per answer")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per forward (TL engine)")
    p.add_argument("--seed", type=int, default=0, help="seed of the persona draws")
    p.add_argument("--overwrite", action="store_true", help="replace a control already in --out")
    add_config(p, ModelConfig)
    add_engine_flags(p)
    add_protocol_flag(p)


def judge_control(args: argparse.Namespace) -> None:
    from npti_lens.judges.classifier import Classifier, ClassifierJudge
    from npti_lens.judges.registry import write_scores
    from npti_lens.model.load import is_engine, load_model
    from npti_lens.workflows.judging import check_control_questions, run_control
    from npti_lens.workflows.judging import judge_cfg as load_judge_cfg

    out = fresh_dir(args.out, args.overwrite, holds="control.json")
    questions, personas = _questions(args, "test")
    judge_cfg = load_judge_cfg(args.judge)
    check_control_questions(judge_cfg, questions)
    hidden = judge_cfg.get("reader", {}).get("kind") == "hidden"
    clf = None if hidden else Classifier.load(args.judge)  # damaged or foreign folders: before the model
    proto = protocol_of(args)
    model = load_model_for(args, proto)
    try:
        if clf is None:
            clf = Classifier.load(args.judge, model=load_model(args.model) if is_engine(model) else model)
        control, scored = run_control(
            model, ClassifierJudge(clf), questions, personas, out / "answers", protocol=proto,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, progress=True,
        )  # fmt: skip
    finally:
        close_engine(model)
    write_scores(out, [r for rows in scored.values() for r in rows])
    control.judge["folder"] = str(args.judge)
    path = control.save(out)
    print("the judge's positive control (P2 prompt on held-out questions):")
    for line in control.lines():
        print("  " + line)
    print(f"control -> {path}")


COMMANDS = [
    Command(
        ("judge", "data"),
        "answer search questions K times per pole under distinct personas: a judge's training data",
        judge_data_flags,
        judge_data,
    ),
    Command(
        ("judge", "control"),
        "the judge's positive control: P2 and no-prompt answers to held-out questions, scored (control.json)",
        judge_control_flags,
        judge_control,
    ),
    Command(
        ("judge", "train"),
        "train the offline trait classifier on a search run's persona answers",
        judge_train_flags,
        judge_train,
    ),
    Command(
        ("score",), "score a generations file with a judge (scores.jsonl, summary.csv)", score_flags, score
    ),
]
