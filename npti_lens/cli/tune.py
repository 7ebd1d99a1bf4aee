"""`npti tune`: sweep an induction's strength for one pole and choose it under a fluency floor."""

from __future__ import annotations

import argparse

from npti_lens.cli._common import (
    Command,
    add_config,
    add_protocol_flag,
    add_target_flags,
    config_from,
    fresh_dir,
    load_model_for,
    protocol_of,
)


def tune_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.model.load import ModelConfig
    from npti_lens.workflows.tune import TuneConfig

    add_target_flags(p)
    p.add_argument(
        "--questions", required=True, help="JSON-lines file of questions to answer at each strength"
    )
    p.add_argument(
        "--texts", default=None, help="JSON lines with question and reference answer (the NLL cost)"
    )
    p.add_argument("--limit", type=int, default=None, help="answer at most this many questions")
    p.add_argument(
        "--judge", default="organism", help="judge of trait score and fluency (organism or openai)"
    )
    p.add_argument("--out", required=True, help="folder for tune.csv, tune.png and choice.json")
    p.add_argument("--overwrite", action="store_true", help="replace a tune run already in --out")
    add_config(p, TuneConfig)
    add_config(p, ModelConfig)
    add_protocol_flag(p)


def tune(args: argparse.Namespace) -> None:
    from npti_lens.core.files import (
        check_pole,
        check_trait,
        to_csv,
        write_json_atomic,
        write_text_atomic,
    )
    from npti_lens.evaluation.capability import load_texts
    from npti_lens.evaluation.figures import tune_curve
    from npti_lens.inputs.questions import load_questions
    from npti_lens.method.directions import Direction
    from npti_lens.method.induction import load_pair
    from npti_lens.workflows.answers import Condition
    from npti_lens.workflows.scoring import make_judge
    from npti_lens.workflows.tune import TuneConfig, tune

    out = fresh_dir(args.out, args.overwrite, holds="tune.csv")
    cfg = config_from(args, TuneConfig)
    cfg.check()
    trait, pole = check_trait(args.trait), check_pole(args.pole)
    questions = load_questions(args.questions, limit=args.limit)
    texts = load_texts(args.texts) if args.texts else []
    proto = protocol_of(args)
    if cfg.method == "npti":
        pair = load_pair(args.neurons, trait, pole)

        def condition_at(s: float) -> Condition:
            return Condition.npti([pair], proto.induce_config(gamma=s, seed=cfg.seed))
    else:
        from npti_lens.core.constants import pole_name

        direction = Direction.load(f"{args.neurons}/{pole_name(trait, pole)}")

        def condition_at(s: float) -> Condition:  # tune() sets the layers of each band it sweeps
            return Condition.vector(direction, s)

    model = load_model_for(args, proto)
    judge = (
        make_judge(args.judge, model=model) if args.judge == "organism" else make_judge(args.judge, out=out)
    )
    result = tune(model, condition_at, questions, texts, judge, cfg, protocol=proto)
    write_text_atomic(out / "tune.csv", to_csv(result.curve))
    write_json_atomic(
        out / "choice.json", {"trait": trait, "pole": pole, "method": cfg.method, "choice": result.choice}
    )
    fig = tune_curve(
        result.curve,
        result.choice,
        out / "tune.png",
        label="gamma" if cfg.method == "npti" else "coefficient",
    )
    for p in result.curve:
        s = "none" if p["strength"] is None else f"{p['strength']:g}"
        band = f"  layers {p['layers']}" if p.get("layers") else ""
        print(
            f"{s:>6}{band}  effect {p['effect']:+.3f}  fluency {p['fluency']:.3f}  NLL change {p['delta_nll']:+.3f}"
        )
    if result.choice is None:
        print(
            f"no strength keeps fluency >= {cfg.fluency_floor:g} and the NLL change <= {cfg.max_nll_increase:g}"
        )
    else:
        band = f", layers {result.choice['layers']}" if result.choice.get("layers") else ""
        print(f"chosen: {result.choice['strength']:g}{band} (effect {result.choice['effect']:+.3f})")
    print(f"-> {out / 'tune.csv'}, {out / 'choice.json'}, {fig}")


COMMANDS = [
    Command(
        ("tune",),
        "sweep an induction's strength for a pole and choose it under a fluency floor",
        tune_flags,
        tune,
    )
]
