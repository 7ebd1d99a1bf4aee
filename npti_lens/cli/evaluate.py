"""Evaluation commands: inventory and the analyses (overlap, layers, capability, ablation)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from npti_lens.cli._common import (
    FROM_PROTOCOL,
    Command,
    add_config,
    add_engine_flags,
    add_protocol_flag,
    add_target_flags,
    close_engine,
    config_from,
    fresh_dir,
    generate_config,
    induce_config,
    load_model_for,
    protocol_of,
    writable_dir,
)
from npti_lens.core.errors import UserError


def inventory_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.evaluation.profiles import InventoryConfig
    from npti_lens.method.induction import InduceConfig
    from npti_lens.model.load import ModelConfig

    add_config(p, ModelConfig)
    add_protocol_flag(p)
    p.add_argument(
        "--inventory",
        default=None,
        help="inventory CSV (id,text,domain,facet,facet_name,keyed); default: shipped",
    )
    p.add_argument(
        "--out", required=True, help="folder for items.csv, facets.csv, domains.csv and profile.png"
    )
    p.add_argument("--neurons", default=None, help="neuron sets: also measure the model under an induction")
    p.add_argument("--trait", default=None, help="trait(s) to induce, comma-separated for several at once")
    p.add_argument("--pole", default=None, help="high or low (one, or one per trait)")
    p.add_argument("--allow-other-model", action="store_true", help="use neuron sets made on another model")
    p.add_argument("--overwrite", action="store_true", help="replace an inventory run already in --out")
    p.add_argument(
        "--method",
        default="npti",
        help="npti; vector (the directions beside the sets; --gamma is the coefficient); or a prompt "
        "baseline, simple or p2 (--trait and --pole, no --neurons; p2 draws a description from --personas)",
    )
    add_config(p, InduceConfig, from_protocol=FROM_PROTOCOL)
    add_config(p, InventoryConfig)


def inventory(args: argparse.Namespace) -> None:
    from npti_lens.core.files import parse_poles
    from npti_lens.evaluation import figures
    from npti_lens.evaluation.profiles import PROMPT_METHODS, InventoryConfig, measure, prompt_frame
    from npti_lens.inputs.inventory import load_inventory
    from npti_lens.method.induction import induce, load_pair

    out = fresh_dir(args.out, args.overwrite, holds="domains.csv")
    items = load_inventory(args.inventory)
    cfg = config_from(args, InventoryConfig)
    cfg.check()
    proto = protocol_of(args)  # the inventory's own item prompt; the protocol's induction rules
    if args.method not in ("npti", "vector", *PROMPT_METHODS):
        raise UserError(f"--method: {args.method!r} is not one of npti, vector, {', '.join(PROMPT_METHODS)}")
    pairs, name, frames = [], "", {}
    if args.method in PROMPT_METHODS:  # a prompt baseline: no neurons, one trait pole
        if args.neurons or not (args.trait and args.pole):
            raise UserError(
                f"--method {args.method}: give --trait and --pole, and no --neurons (it is a prompt)"
            )
        poles = parse_poles(args.trait, args.pole)
        if len(poles) != 1:
            raise UserError(f"--method {args.method}: one trait pole at a time (--trait {args.trait})")
        (t, p), seed = poles[0], getattr(args, "seed", None) or 0
        frames[f"{t}_{p} {args.method}"] = prompt_frame(args.method, t, p, proto, cfg.personas, seed)
    elif args.neurons or args.trait or args.pole:
        if not (args.neurons and args.trait and args.pole):
            raise UserError("--neurons, --trait and --pole go together (an induction needs all three)")
        poles = parse_poles(args.trait, args.pole)
        pairs = [load_pair(args.neurons, t, p) for t, p in poles]
        icfg = induce_config(args, proto)
        strength = "gamma" if args.method == "npti" else "vector coef"
        name = "+".join(f"{t}_{p}" for t, p in poles) + f" {strength}={icfg.gamma:g}"
    model = load_model_for(args, proto)
    inductions = {}
    if pairs and args.method == "vector":
        from npti_lens.method.directions import Direction, steer

        directions = [Direction.load(Path(args.neurons) / t.name) for t, _ in pairs]

        @contextlib.contextmanager
        def steered() -> Iterator[None]:
            with contextlib.ExitStack() as stack:
                for d in directions:
                    stack.enter_context(steer(model, d, icfg.gamma, allow_other_model=args.allow_other_model))
                yield

        inductions[name] = steered
    elif pairs:
        inductions[name] = lambda: induce(model, pairs, icfg, allow_other_model=args.allow_other_model)
    result = measure(model, items, cfg, inductions, frames=frames, progress=True)
    files = result.save(out)
    rows = result.domain_rows()
    files["figure"] = figures.inventory_profile(rows, out / "profile.png")
    print(f"{'condition':<36}{'domain':<19}{'score':>6}  {'95% CI':<13}{'alpha':>6}{'mass':>6}{'shift':>7}")
    for r in rows:
        shift = f"{r['shift']:+7.2f}" if "shift" in r else ""
        ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        print(
            f"{r['condition']:<36}{r['domain']:<19}{r['score']:6.2f}  {ci:<13}{r['alpha']:6.2f}"
            f"{r['option_mass']:6.2f}{shift}"
        )
    low = [r for r in rows if not r["option_mass"] >= 0.5]
    if low:
        print(
            f"warning: under half of the probability is on the options 1-5 for {len(low)} of {len(rows)} rows: "
            "the model is mostly not answering with a number, so read those scores with care"
        )
    for what, path in files.items():
        print(f"{what:<9}{path}")


def sets_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("neurons", metavar="NEURONS", help="folder of neuron sets ({Trait}_{pole}/)")
    p.add_argument("--out", required=True, help="folder for the CSV tables and the figure")


def overlap(args: argparse.Namespace) -> None:
    from npti_lens.evaluation.figures import overlap_heatmap
    from npti_lens.evaluation.overlap import overlap
    from npti_lens.method.neurons import load_neuron_sets

    out = writable_dir(args.out)  # tables and figure are remade from the sets: writable is enough
    ov = overlap(load_neuron_sets(args.neurons))
    files = ov.save(out)
    fig = overlap_heatmap(ov, out / "overlap_jaccard.png")
    print(ov.to_frame("jaccard").round(3).to_string())
    for note in ov.notes:
        print(note)
    print(f"tables: {', '.join(str(p) for p in files.values())}; figure: {fig} (+ .pdf)")


def layers(args: argparse.Namespace) -> None:
    from npti_lens.evaluation.figures import layer_distribution as plot_layers
    from npti_lens.evaluation.overlap import layer_distribution
    from npti_lens.method.neurons import load_neuron_sets

    out = writable_dir(args.out)
    dist = layer_distribution(load_neuron_sets(args.neurons))
    files = dist.save(out)
    fig = plot_layers(dist, out / "layers.png")
    print(dist.to_frame("count").to_string())
    print(f"tables: {', '.join(str(p) for p in files.values())}; figure: {fig} (+ .pdf)")


def capability_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.model.load import ModelConfig

    add_target_flags(p)
    p.add_argument("--texts", default=None, help="JSON lines with question and reference answer (perplexity)")
    p.add_argument(
        "--choices", default=None, help="JSON lines with question, choices and answer index (accuracy)"
    )
    p.add_argument(
        "--gammas", default="0.6,1.0,1.5", help="comma-separated gammas, or coefficients with --method vector"
    )
    p.add_argument(
        "--method",
        default="npti",
        help="npti (the neurons), or vector (the direction beside them; npti select)",
    )
    p.add_argument("--out", required=True, help="folder for capability.csv")
    p.add_argument("--overwrite", action="store_true", help="replace a capability.csv already in --out")
    add_config(p, ModelConfig)
    add_protocol_flag(p)


def capability(args: argparse.Namespace) -> None:
    from npti_lens.core.files import check_pole, check_trait, parse_numbers, to_csv, write_text_atomic
    from npti_lens.evaluation.capability import load_choice_items, load_texts, retention
    from npti_lens.method.induction import load_pair

    trait, pole = check_trait(args.trait), check_pole(args.pole)
    gammas = parse_numbers(args.gammas, "--gammas")
    out = fresh_dir(args.out, args.overwrite, holds="capability.csv")
    if not args.texts and not args.choices:
        raise UserError("npti analyze capability: pass --texts (perplexity) and/or --choices (accuracy)")
    texts = load_texts(args.texts) if args.texts else []
    choices = load_choice_items(args.choices) if args.choices else []
    target, opp = load_pair(args.neurons, trait, pole)
    intervention_at = None
    if args.method == "vector":
        from npti_lens.method.directions import Direction, steer

        direction = Direction.load(Path(args.neurons) / target.name)
    elif args.method != "npti":
        raise UserError(f"--method: {args.method!r} is not npti or vector")
    proto = protocol_of(args)
    model = load_model_for(args, proto)
    if args.method == "vector":

        def intervention_at(coef: float) -> object:
            return steer(model, direction, coef, allow_other_model=args.allow_other_model)

    result = retention(
        model,
        target,
        opp,
        texts,
        gammas,
        allow_other_model=args.allow_other_model,
        choices=choices,
        rules=proto.induce_config(),
        intervention_at=intervention_at,
    )
    write_text_atomic(out / "capability.csv", to_csv(result.rows))
    print(result.to_frame().to_string(index=False))
    print(f"-> {out / 'capability.csv'}")


def ablation_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.model.generation import GenerateConfig
    from npti_lens.model.load import ModelConfig
    from npti_lens.workflows.ablation import AblationConfig

    add_target_flags(p)
    p.add_argument("--questions", required=True, help="JSON-lines file of questions")
    p.add_argument("--out", required=True, help="folder for generations.jsonl (and scores)")
    p.add_argument("--limit", type=int, default=None, help="answer at most this many questions")
    p.add_argument(
        "--judge", default=None, help="score the answers too: organism, or classifier (with --classifier)"
    )
    p.add_argument(
        "--classifier", default=None, help="--judge classifier: its folder (npti judge train --out)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an ablation already in --out")
    add_config(p, AblationConfig)
    add_config(p, ModelConfig)
    add_engine_flags(p)
    add_protocol_flag(p)
    add_config(p, GenerateConfig, from_protocol=FROM_PROTOCOL)


def ablation(args: argparse.Namespace) -> None:
    from npti_lens.core.files import check_pole, check_trait, to_csv, write_text_atomic
    from npti_lens.evaluation.curves import evidence_forest
    from npti_lens.evaluation.evidence import to_rows
    from npti_lens.inputs.questions import load_questions
    from npti_lens.judges.registry import summarize
    from npti_lens.method.induction import load_pair
    from npti_lens.workflows.ablation import AblationConfig, ablation_evidence, run_ablation
    from npti_lens.workflows.answers import write_answers
    from npti_lens.workflows.scoring import judges, score_file

    out = fresh_dir(args.out, args.overwrite, holds="generations.jsonl")
    trait, pole = check_trait(args.trait), check_pole(args.pole)
    if args.judge and args.judge not in judges():  # an unknown judge fails before generating
        raise UserError(f"--judge: unknown judge {args.judge!r}; choose {' or '.join(judges())}")
    judge_kwargs: dict = {}
    if args.judge == "classifier":  # a missing or damaged classifier fails before generating
        from npti_lens.judges.classifier import Classifier

        if not args.classifier:
            raise UserError("--classifier: --judge classifier needs the folder of npti judge train")
        judge_kwargs["classifier"] = Classifier.load(args.classifier)
    questions = load_questions(args.questions, limit=args.limit)
    target, opp = load_pair(args.neurons, trait, pole)
    proto = protocol_of(args)
    gcfg = generate_config(args, proto, "neutral")
    acfg = config_from(args, AblationConfig)
    if acfg.vector_coef is not None and args.engine != "tl":
        raise UserError("--vector-coef: the direction baseline runs on --engine tl only")
    model = load_model_for(args, proto)
    direction = None
    if acfg.vector_coef is not None:
        from npti_lens.method.directions import Direction

        direction = Direction.load(Path(args.neurons) / target.name)
    try:
        rows = run_ablation(
            model, target, opp, questions, acfg, gcfg,
            protocol=proto, allow_other_model=args.allow_other_model, direction=direction,
        )  # fmt: skip
        path = write_answers(out / "generations.jsonl", rows)
        print(f"{len(rows)} answers -> {path}")
        if args.judge:
            # organism: its perplexity; classifier: fluency's perplexity under the plain model
            kwargs = {**judge_kwargs, "model": model} if args.judge in ("organism", "classifier") else {}
            result = score_file(path, out, args.judge, overwrite=True, **kwargs)
    finally:
        close_engine(model)
    if args.judge:
        cols = ("condition", "gamma", "k", "layers", "trait_score_mean", "fluency_mean")
        print(" ".join(f"{c:>16}" for c in cols))
        for r in summarize(result.scored):
            cells = ("" if r[c] is None else f"{r[c]:.3f}" if isinstance(r[c], float) else r[c] for c in cols)
            print(" ".join(f"{x:>16}" for x in cells))
        cell = ablation_evidence(result.scored)
        write_text_atomic(out / "evidence.csv", to_csv(to_rows([cell])))
        evidence_forest(to_rows([cell]), out / "evidence.png")
        print(
            f"both vs none {cell.diff_none:+.3f} [{cell.ci_none_low:+.3f}, {cell.ci_none_high:+.3f}] p={cell.p_none:.3g}; "
            f"vs {cell.k} random controls {cell.diff_control:+.3f} [{cell.ci_control_low:+.3f}, "
            f"{cell.ci_control_high:+.3f}] p={cell.p_control:.3g} (single draws {cell.control_min:.2f}-"
            f"{cell.control_max:.2f}, both {cell.npti:.2f}): {cell.verdict}"
        )
        print(f"scores -> {result.scores}, {result.summary}; evidence -> {out / 'evidence.csv'}")


COMMANDS = [
    Command(
        ("inventory",),
        "a Big Five profile from a rated inventory (option probabilities, no sampling)",
        inventory_flags,
        inventory,
    ),
    Command(
        ("analyze", "overlap"),
        "shared neurons, Jaccard, overlap coefficient, significance",
        sets_flags,
        overlap,
    ),
    Command(("analyze", "layers"), "neurons per layer of every pole", sets_flags, layers),
    Command(
        ("analyze", "capability"),
        "perplexity of reference answers with and without an induction",
        capability_flags,
        capability,
    ),
    Command(
        ("analyze", "ablation"),
        "answer questions under every ablation of an induction",
        ablation_flags,
        ablation,
    ),
]
