"""`npti monitor`: read a pole from the model over answers files (or questions answered on the fly)."""

from __future__ import annotations

import argparse

from npti_lens.cli._common import (
    FROM_PROTOCOL,
    Command,
    add_config,
    add_engine_flags,
    add_protocol_flag,
    close_engine,
    config_from,
    fresh_dir,
    generate_config,
    load_model_for,
    protocol_of,
)
from npti_lens.core.errors import UserError


def monitor_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.model.generation import GenerateConfig
    from npti_lens.model.load import ModelConfig
    from npti_lens.workflows.monitoring import MonitorConfig

    p.add_argument("answers", nargs="*", help="answers files (JSON lines with prompt and answer_token_ids)")
    p.add_argument("--questions", default=None,
                   help="also answer these questions (neutral prompt; on --engine) and monitor the answers")  # fmt: skip
    p.add_argument("--neurons", required=True, help="folder of neuron sets (npti select)")
    p.add_argument("--trait", required=True, help="trait to read")
    p.add_argument("--pole", required=True, help="high or low: whose neurons count positive")
    p.add_argument(
        "--run", default=None, help="the search run behind the sets: chooses the direction's block"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="write into --out even if it holds a monitor")
    p.add_argument("--allow-other-model", action="store_true",
                   help="read sets selected on another model of the same shape")  # fmt: skip
    add_config(p, MonitorConfig)
    add_config(p, ModelConfig)
    add_engine_flags(p)
    add_protocol_flag(p)
    add_config(p, GenerateConfig, from_protocol=FROM_PROTOCOL)


def monitor(args: argparse.Namespace) -> None:
    """Check every input, load the model, choose the block, monitor, write, print the summary."""
    from pathlib import Path

    from npti_lens.core.constants import pole_name
    from npti_lens.core.files import check_pole, check_trait, parse_layer_spec
    from npti_lens.workflows.monitoring import (
        MONITOR_FILE,
        MonitorConfig,
        choose_layer,
        load_readout,
        read_monitored,
        run_monitor,
    )

    cfg = config_from(args, MonitorConfig)
    out = fresh_dir(args.out, args.overwrite, holds=MONITOR_FILE)
    if not args.answers and not args.questions:
        raise UserError("npti monitor: name answers files, or --questions to answer first")
    for flag, value in (("--batch-size", cfg.batch_size), ("--choose-from", cfg.choose_from)):
        if value < 1:
            raise UserError(f"{flag}: {value} is not 1 or more")
    if args.engine != "tl" and not args.questions:
        raise UserError(f"--engine {args.engine}: only --questions are answered on an engine (the reading "
                        "runs on the TL model); drop --engine or add --questions")  # fmt: skip
    stems = [Path(f).stem for f in args.answers] + (["answers"] if args.questions else [])
    if len(set(stems)) != len(stems):
        raise UserError("npti monitor: two inputs share a file name (with --questions, answers.jsonl is "
                        "one); rename one, each names its rows' set")  # fmt: skip
    trait, pole = check_trait(args.trait), check_pole(args.pole)
    neurons, opp, direction = load_readout(args.neurons, trait, pole)
    for f in args.answers:
        read_monitored(f, None if args.allow_other_model else neurons.model)
    layers: list[int] = []
    where = Path(args.neurons) / pole_name(trait, pole)
    if direction is None and cfg.layer is not None:
        raise UserError(f"--layer: {where} holds no direction (select again with this version)")
    if direction is not None and cfg.layer is not None:
        layers = parse_layer_spec(cfg.layer, "--layer")
        if layers[-1] >= direction.n_layers:
            raise UserError(
                f"--layer: the direction has blocks 0..{direction.n_layers - 1}, not {layers[-1]}"
            )
    elif direction is not None:
        if args.run is None:
            raise UserError("npti monitor: give --run (the search run behind --neurons: the direction is read at "
                            "the block that best separates its answers) or --layer")  # fmt: skip
        for p in (pole, opp.pole):
            if not (Path(args.run) / "answers" / f"{pole_name(trait, p)}.jsonl").is_file():
                raise UserError(
                    f"--run: {args.run} has no answers/{pole_name(trait, p)}.jsonl; name the search run or give --layer"
                )
    proto = protocol_of(args)
    from npti_lens.inputs.questions import load_questions
    from npti_lens.method.induction import check_fits
    from npti_lens.method.readout import Readout
    from npti_lens.workflows.answers import Condition, answer, write_answers

    questions = load_questions(args.questions) if args.questions else []
    model = load_model_for(args, proto)
    for s in (neurons, opp):
        check_fits(model, s, allow_other_model=args.allow_other_model)
    files = list(args.answers)
    if questions:
        gcfg = generate_config(args, proto, "neutral")
        rows = answer(model, questions, Condition.none(trait), gcfg, protocol=proto, progress=True)
        files.append(str(write_answers(out / "answers.jsonl", rows)))
    if args.engine != "tl":  # answered at scale there; read by teacher forcing on the TL model
        close_engine(model)
        args.engine = "tl"
        model = load_model_for(args, proto)
    chosen = None
    if direction is not None and not layers:
        best, scores = choose_layer(
            model,
            neurons,
            opp,
            direction,
            args.run,
            cfg.choose_from,
            batch_size=cfg.batch_size,
            progress=True,
        )
        chosen = {
            "by": "search answers",
            "run": str(args.run),
            "n_per_pole": cfg.choose_from,
            "auroc": scores,
        }
        layers = [best]
        print(f"direction read at block {best} (AUROC {scores[best]:.2f} on the search answers)")
    readout = Readout(neurons, opp, direction, tuple(layers))
    results = run_monitor(model, files, readout, out, cfg, chosen=chosen, progress=True)
    for name, rows in results.items():
        n = len(rows)
        npti = sum(r["npti_answer"] or 0.0 for r in rows) / max(n, 1)
        note = " (induced: its npti readout sees the edit)" if any(r["induced"] for r in rows) else ""
        print(f"{name}: {n} answers, mean npti readout over answers {npti:+.4f}{note}")
    print(f"-> {out}")


COMMANDS = [
    Command(
        ("monitor",),
        "read a trait pole from the model over answers: per answer and per token",
        monitor_flags,
        monitor,
    ),  # fmt: skip
]
