"""Answering commands: generate (no intervention), induce (NPTI), baseline (prompt baselines)."""

from __future__ import annotations

import argparse

from npti_lens.cli._common import (
    FROM_PROTOCOL,
    Command,
    add_config,
    add_engine_flags,
    add_protocol_flag,
    add_target_flags,
    close_engine,
    fresh_file,
    generate_config,
    induce_config,
    load_model_for,
    protocol_of,
)


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--questions", required=True, help="JSON-lines file of questions")
    p.add_argument("--out", required=True, help="JSON-lines output file")
    p.add_argument("--limit", type=int, default=None, help="answer at most this many questions")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _model_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.model.generation import GenerateConfig
    from npti_lens.model.load import ModelConfig

    add_config(p, ModelConfig)
    add_engine_flags(p)
    add_protocol_flag(p)
    add_config(p, GenerateConfig, from_protocol=FROM_PROTOCOL)


def generate_flags(p: argparse.ArgumentParser) -> None:
    _common_flags(p)
    _model_flags(p)


def induce_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.method.induction import InduceConfig

    _common_flags(p)
    add_target_flags(p)
    add_config(p, InduceConfig, from_protocol=FROM_PROTOCOL)
    _model_flags(p)


def baseline_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        required=True,
        help="simple (an adjective phrase), p2 (a persona description, as the released code ran P2) or "
        "p2-as-written (the released TEMPLATE_p2, which its loop never used)",
    )
    p.add_argument("--trait", required=True, help="trait of the prompt")
    p.add_argument("--pole", required=True, help="high or low")
    p.add_argument("--personas", default=None, help="p2: JSON-lines persona file (pole keys -> descriptions)")
    _common_flags(p)
    _model_flags(p)


def _run(args: argparse.Namespace, make_condition: object) -> None:
    """Check the output, read the questions, build the condition, load the model, answer, write."""
    from npti_lens.inputs.questions import load_questions
    from npti_lens.workflows.answers import answer, write_answers

    out = fresh_file(args.out, args.overwrite)
    questions = load_questions(args.questions, limit=args.limit)
    proto = protocol_of(args)
    condition = make_condition(proto, len(questions))  # type: ignore[operator] - a callable
    gcfg = generate_config(args, proto, condition.stage)
    model = load_model_for(args, proto)
    rows = answer(
        model,
        questions,
        condition,
        gcfg,
        protocol=proto,
        allow_other_model=getattr(args, "allow_other_model", False),
        progress=True,
    )
    close_engine(model)
    write_answers(out, rows)
    print(f"{len(rows)} answers -> {out}")


def generate(args: argparse.Namespace) -> None:
    from npti_lens.workflows.answers import Condition

    _run(args, lambda proto, n: Condition.none())


def induce(args: argparse.Namespace) -> None:
    from npti_lens.core.files import check_pole, check_trait
    from npti_lens.method.induction import load_pair
    from npti_lens.workflows.answers import Condition

    pair = load_pair(args.neurons, check_trait(args.trait), check_pole(args.pole))
    _run(args, lambda proto, n: Condition.npti([pair], induce_config(args, proto)))


def baseline(args: argparse.Namespace) -> None:
    from npti_lens.core.files import check_pole, check_trait
    from npti_lens.workflows.answers import baseline_condition

    trait, pole = check_trait(args.trait), check_pole(args.pole)
    _run(
        args,
        lambda proto, n: baseline_condition(
            args.method, trait, pole, n, proto, personas=args.personas, seed=args.seed
        ),
    )


COMMANDS = [
    Command(
        ("generate",), "answer questions with the neutral prompt, no intervention", generate_flags, generate
    ),
    Command(
        ("induce",),
        "answer questions with the neutral prompt while inducing a trait pole",
        induce_flags,
        induce,
    ),
    Command(
        ("baseline",),
        "answer under a prompt baseline: simple (an adjective phrase) or p2 (a persona description)",
        baseline_flags,
        baseline,
    ),
]
