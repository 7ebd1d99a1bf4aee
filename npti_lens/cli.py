"""The `npti` command. Flags come from the stage configs' fields, so each is defined once."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from npti_lens.errors import UserError

log = logging.getLogger("npti_lens")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Settings a protocol gives unless a flag says otherwise (the flags default to None).
FROM_PROTOCOL = ("max_new_tokens", "repetition_penalty", "temperature", "keep", "clamp_order", "clamp_layers")
PROTOCOL_HELP = (
    "npti (the paper's released code: templates, sampling, judge prompts, keep rule; the default), "
    "lens (npti_lens 0.1's own prompts), organism (the default with --model organism), or a JSON file "
    "of the same layout"
)


def add_config(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    required: Sequence[str] = (),
    from_protocol: Sequence[str] = (),
) -> None:
    """Add a --flag for every field of dataclass `cls`; help text is the field's metadata.

    Fields named in `from_protocol` default to None: the run's protocol fills them.
    """
    hints = typing.get_type_hints(cls)
    existing = {a.dest for a in parser._actions}
    for f in dataclasses.fields(cls):
        if f.name in existing:
            continue  # shared with another config (e.g. --seed): one flag sets both
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = typing.get_args(kind)
        if args and type(None) in args:
            kind = next(a for a in args if a is not type(None))
        default = None if f.default is dataclasses.MISSING else f.default
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif f.name in required or f.default is dataclasses.MISSING:
            parser.add_argument(flag, dest=f.name, type=kind, required=True, help=help_text)
        elif f.name in from_protocol:
            parser.add_argument(
                flag, dest=f.name, type=kind, default=None, help=f"{help_text} (default: the protocol's)"
            )
        else:
            parser.add_argument(
                flag, dest=f.name, type=kind, default=default, help=f"{help_text} (default: {default})"
            )


def config_from(args: argparse.Namespace, cls: type) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_protocol_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", default=None, help=PROTOCOL_HELP)


def protocol_of(args: argparse.Namespace) -> Any:
    """The run's protocol: --protocol, else organism for --model organism, else npti."""
    from npti_lens.protocol import load_protocol

    return load_protocol(args.protocol, model=getattr(args, "model", None))


def generate_config(args: argparse.Namespace, proto: Any, stage: str) -> Any:
    from npti_lens.generate import GenerateConfig

    return proto.generate_config(
        stage, **{f.name: getattr(args, f.name) for f in dataclasses.fields(GenerateConfig)}
    )


def induce_config(args: argparse.Namespace, proto: Any) -> Any:
    from npti_lens.induce import InduceConfig

    return proto.induce_config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(InduceConfig)})


def load_model_for(args: argparse.Namespace, proto: Any) -> Any:
    """The model of --model/--device/--dtype; --dtype auto: the protocol's dtype on a GPU, else float32."""
    from npti_lens.model import ModelConfig, load_model

    return load_model(config_from(args, ModelConfig), gpu_dtype=proto.gpu_dtype)


def _fresh_file(path: str, overwrite: bool, flag: str = "--out") -> Path:
    """An output file that is absent (or replaced with --overwrite), in a place that can be written."""
    from npti_lens.io import check_writable

    p = check_writable(path, flag, folder=False)
    if p.exists() and not overwrite:
        raise UserError(f"{flag}: {p} exists; pass --overwrite to replace it or choose another path")
    return p


def _fresh_dir(path: str, overwrite: bool, holds: str | None = None) -> Path:
    """An output folder that is empty or absent, unless --overwrite says to write into it.

    With `holds` (a file name), only a folder holding that file counts as taken.
    """
    from npti_lens.io import check_writable

    out = check_writable(path, "--out", folder=True)
    taken = (out / holds).exists() if holds else out.exists() and any(out.iterdir())
    if taken and not overwrite:
        what = f"already holds {holds}" if holds else "is not empty"
        raise UserError(f"--out: {out} {what}; pass --overwrite or choose another folder")
    return out


# ----- subcommands -----------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> None:
    from npti_lens.io import check_writable
    from npti_lens.search import SearchConfig, run_search

    check_writable(args.out, folder=True)
    proto = protocol_of(args)
    gcfg = generate_config(args, proto, "search")
    model = load_model_for(args, proto)
    stats = run_search(
        model,
        args.questions,
        args.personas,
        args.out,
        config_from(args, SearchConfig),
        gcfg,
        protocol=proto,
        resume=args.resume,
        progress=True,
    )
    for name, s in stats.items():
        print(f"{name}: {s.meta.get('n_questions', 0)} questions, {s.n_tokens} answer tokens")
    print(f"statistics and answers in {args.out} (protocol {proto.name})")


def cmd_select(args: argparse.Namespace) -> None:
    from npti_lens.select import SelectConfig, report, select_run

    cfg = config_from(args, SelectConfig)
    out = _fresh_dir(args.out, args.overwrite)
    sets = select_run(args.run, cfg)  # every statistics file read and checked before anything is written
    for ns in sets.values():
        ns.save(out / ns.name)
    for r in report(sets):
        print(f"{r.name}: {r.kept} neurons, {r.positive} with diff > 0, {r.shared} shared with {r.opposite}")
    for r in report(sets):
        for w in r.warnings(cfg):
            print(f"warning: {w}", file=sys.stderr)
    print(f"{len(sets)} neuron sets -> {out}")


def _answer(args: argparse.Namespace, *, induction: bool) -> None:
    from npti_lens.data import load_questions
    from npti_lens.generate import generate
    from npti_lens.induce import check_fits, induce, load_pair
    from npti_lens.io import check_pole, check_trait

    out = _fresh_file(args.out, args.overwrite)
    questions = load_questions(args.questions, limit=args.limit)
    proto = protocol_of(args)
    gcfg = generate_config(args, proto, "neutral")
    trait = pole = gamma = None
    pairs = []
    if induction:
        trait, pole = check_trait(args.trait), check_pole(args.pole)
        icfg = induce_config(args, proto)
        gamma = icfg.gamma
        pairs = [load_pair(args.neurons, trait, pole)]
    model = load_model_for(args, proto)
    for ns in (s for pair in pairs for s in pair):
        check_fits(model, ns, allow_other_model=args.allow_other_model)
    prompts = [proto.prompt(model.tokenizer, "neutral", question=q.text) for q in questions]
    _check_prompts(model, prompts, questions, gcfg.max_new_tokens)
    steer = (
        induce(model, pairs, icfg, allow_other_model=args.allow_other_model) if induction else nullcontext()
    )
    with steer:
        gens = generate(model, [p.token_ids for p in prompts], gcfg, progress=True)
    condition = "npti" if induction else "none"
    _write_answers(
        out,
        questions,
        prompts,
        gens,
        trait=trait,
        pole=pole,
        condition=condition,
        gamma=gamma,
        **proto.record(),
    )


def _check_prompts(model: Any, prompts: list, questions: list, max_new_tokens: int) -> None:
    """Before generating: every prompt fits the model's positions; warn if the model cannot read them."""
    from npti_lens.generate import check_context
    from npti_lens.prompts import warn_unknown

    ids, sources = [p.token_ids for p in prompts], [q.source for q in questions]
    check_context(model, ids, max_new_tokens, sources)
    warn_unknown(model.tokenizer, ids, sources)


def _write_answers(out: Path, questions: list, prompts: list, gens: list, **fields: Any) -> None:
    """The JSON-lines answers of generate / induce / baseline: the same fields for all three."""
    from npti_lens.io import write_jsonl_atomic

    rows = [
        {
            "question": q.text,
            "prompt": p.text,
            "answer": g.text,
            **fields,
            "n_answer_tokens": len(g.answer_ids),
            "hit_eos": g.hit_eos,
        }
        for q, p, g in zip(questions, prompts, gens, strict=True)
    ]
    write_jsonl_atomic(out, rows)
    print(f"{len(rows)} answers -> {out}")


BASELINES = ("simple", "p2", "p2-as-written")


def cmd_baseline(args: argparse.Namespace) -> None:
    from npti_lens.data import draw_personas, load_personas, load_questions
    from npti_lens.generate import generate
    from npti_lens.io import check_pole, check_trait

    if args.method not in BASELINES:
        raise UserError(f"--method: unknown baseline {args.method!r}; choose {', '.join(BASELINES)}")
    trait, pole = check_trait(args.trait), check_pole(args.pole)
    out = _fresh_file(args.out, args.overwrite)
    questions = load_questions(args.questions, limit=args.limit)
    proto = protocol_of(args)
    gcfg = generate_config(args, proto, args.method)  # a stage the protocol lacks fails here
    if args.method == "simple":
        personalities = [proto.adjective(trait, pole)] * len(questions)
    else:
        if not args.personas:
            raise UserError(
                f"--personas: the {args.method} baseline needs a persona file (JSON lines per pole key)"
            )
        descs = load_personas(args.personas, [trait])[(trait, pole)]
        personalities = draw_personas(descs, len(questions), seed=args.seed, trait=trait, pole=pole)
    model = load_model_for(args, proto)
    prompts = [
        proto.prompt(model.tokenizer, args.method, personality=d, question=q.text)
        for q, d in zip(questions, personalities, strict=True)
    ]
    _check_prompts(model, prompts, questions, gcfg.max_new_tokens)
    gens = generate(model, [p.token_ids for p in prompts], gcfg, progress=True)
    _write_answers(
        out,
        questions,
        prompts,
        gens,
        trait=trait,
        pole=pole,
        condition=args.method,
        gamma=None,
        method=args.method,
        **proto.record(),
    )


def cmd_generate(args: argparse.Namespace) -> None:
    _answer(args, induction=False)


def cmd_induce(args: argparse.Namespace) -> None:
    _answer(args, induction=True)


def cmd_import_npti(args: argparse.Namespace) -> None:
    from npti_lens.neurons import import_reference

    out = _fresh_dir(args.out, args.overwrite)
    from npti_lens.protocol import load_protocol

    sets = import_reference(args.dir, model=args.model_name, n_layers=args.n_layers, d_mlp=args.d_mlp)
    for name, ns in sets.items():
        ns.provenance = load_protocol("npti").record()  # made by the released code
        ns.save(out / name)
        print(f"{name}: {len(ns)} neurons")
    print(f"{len(sets)} neuron sets -> {out}")


def cmd_score(args: argparse.Namespace) -> None:
    from npti_lens.io import check_pole, check_trait, fingerprint, read_json, read_jsonl, write_json_atomic
    from npti_lens.score import SCORE_CFG_FILE, make_judge, score_rows, write_scores

    rows = read_jsonl(args.generations, what="generations (JSON lines with question and answer)")
    for r in rows:
        if not isinstance(r.get("answer"), str):
            raise UserError(f'{args.generations}:{r["_line"]}: no "answer" text to score')
    kwargs: dict[str, Any] = {}
    if args.trait:
        kwargs["trait"] = check_trait(args.trait)
    if args.pole:
        kwargs["pole"] = check_pole(args.pole)
    for r in rows:  # what the rows are judged against is what they record (generate rows carry none)
        r.update({k: kwargs[k] for k in ("trait", "pole") if k in kwargs})
    # A folder may be scored again from the same file (that resumes a judge's ledger), not from another.
    out = _fresh_dir(args.out, True)
    source = {
        "generations": str(args.generations),
        "generations_fingerprint": fingerprint([{k: v for k, v in r.items() if k != "_line"} for r in rows]),
        "judge": args.judge,
    }
    if (out / SCORE_CFG_FILE).is_file() or (out / "scores.jsonl").is_file():
        old = read_json(out / SCORE_CFG_FILE) if (out / SCORE_CFG_FILE).is_file() else {}
        if old != source and not args.overwrite:
            raise UserError(
                f"--out: {out} holds scores of {old.get('generations', 'another file')} "
                f"({old.get('judge', '?')} judge); pass --overwrite or choose another folder"
            )
    if args.judge == "organism":
        from npti_lens.model import load_model

        kwargs["model"] = load_model("organism")
    elif args.judge == "openai":
        from npti_lens.llm import ChatConfig
        from npti_lens.protocol import load_protocol

        kwargs.update(out=args.out, cfg=config_from(args, ChatConfig), protocol=load_protocol(args.protocol))
    judge = make_judge(args.judge, **kwargs)
    judge.progress = True  # type: ignore[attr-defined] - judges without a bar ignore it
    write_json_atomic(out / SCORE_CFG_FILE, source)
    scored = score_rows(rows, judge)
    scores, summary = write_scores(out, scored)
    missing = sum(1 for r in scored if r.get("judge_error"))
    print(
        f"{len(rows) - missing} of {len(rows)} answers scored by the {judge.name} judge"
        f"{f', {missing} failed' if missing else ''} -> {scores}, {summary}"
    )
    report = getattr(judge, "report", None)
    if report is not None:
        print(report())
    if missing:
        raise UserError(
            f"{missing} of {len(rows)} answers lack a rating (see judge_error in {scores}); rerunning the "
            "same command retries the failed requests only and resends nothing already answered"
        )


def cmd_demo(args: argparse.Namespace) -> None:
    from npti_lens.organism.demo import RESULTS_CSV, DemoConfig, run_demo, summary_lines

    out = _fresh_dir(args.out, args.overwrite, holds=RESULTS_CSV)
    result = run_demo(config_from(args, DemoConfig), out, progress=True)
    print(result.table())
    print()
    print("mean over the 5 traits x 2 poles:")
    for line in summary_lines(result):
        print("  " + line)
    print()
    for what, path in result.files.items():
        print(f"{what:<12}{path}")


def cmd_organism_train(args: argparse.Namespace) -> None:
    from npti_lens.organism.train import TrainConfig, train

    out = _fresh_dir(args.out, args.overwrite, holds="model.safetensors")
    record = train(config_from(args, TrainConfig), out, progress=True)
    print(f"trained in {record['seconds']}s, final loss {record['final_loss']:.4f} -> {args.out}")


def cmd_analyze_overlap(args: argparse.Namespace) -> None:
    from npti_lens.analysis import overlap
    from npti_lens.figures import overlap_heatmap
    from npti_lens.neurons import load_neuron_sets

    ov = overlap(load_neuron_sets(args.neurons))
    files = ov.save(args.out)
    fig = overlap_heatmap(ov, Path(args.out) / "overlap_jaccard.png")
    print(ov.to_frame("jaccard").round(3).to_string())
    for note in ov.notes:
        print(note)
    print(f"tables: {', '.join(str(p) for p in files.values())}; figure: {fig} (+ .pdf)")


def cmd_analyze_layers(args: argparse.Namespace) -> None:
    from npti_lens.analysis import layer_distribution
    from npti_lens.figures import layer_distribution as plot_layers
    from npti_lens.neurons import load_neuron_sets

    dist = layer_distribution(load_neuron_sets(args.neurons))
    files = dist.save(args.out)
    fig = plot_layers(dist, Path(args.out) / "layers.png")
    print(dist.to_frame("count").to_string())
    print(f"tables: {', '.join(str(p) for p in files.values())}; figure: {fig} (+ .pdf)")


def cmd_analyze_ablation(args: argparse.Namespace) -> None:
    from npti_lens.ablation import AblationConfig, run_ablation
    from npti_lens.data import load_questions
    from npti_lens.induce import load_pair
    from npti_lens.io import check_pole, check_trait, write_jsonl_atomic
    from npti_lens.score import make_judge, score_rows, summarize, write_scores

    out = _fresh_dir(args.out, args.overwrite, holds="generations.jsonl")
    trait, pole = check_trait(args.trait), check_pole(args.pole)
    questions = [q.text for q in load_questions(args.questions, limit=args.limit)]
    target, opp = load_pair(args.neurons, trait, pole)
    judge = make_judge(args.judge) if args.judge else None  # an unknown judge fails before generating
    proto = protocol_of(args)
    gcfg = generate_config(args, proto, "neutral")
    model = load_model_for(args, proto)
    rows = run_ablation(
        model,
        target,
        opp,
        questions,
        config_from(args, AblationConfig),
        gcfg,
        protocol=proto,
        allow_other_model=args.allow_other_model,
    )
    write_jsonl_atomic(out / "generations.jsonl", rows)
    print(f"{len(rows)} answers -> {out / 'generations.jsonl'}")
    if judge is not None:
        if args.judge == "organism":
            judge = make_judge("organism", model=model)
        scored = score_rows(rows, judge)
        write_scores(out, scored)
        cols = ("condition", "gamma", "k", "layers", "trait_score_mean", "fluency_mean")
        print(" ".join(f"{c:>16}" for c in cols))
        for r in summarize(scored):
            print(
                " ".join(
                    f"{'' if r[c] is None else (f'{r[c]:.3f}' if isinstance(r[c], float) else r[c]):>16}"
                    for c in cols
                )
            )
        print(f"scores -> {out / 'scores.jsonl'}, {out / 'summary.csv'}")


def cmd_analyze_capability(args: argparse.Namespace) -> None:
    from npti_lens.capability import load_choice_items, retention
    from npti_lens.induce import load_pair
    from npti_lens.io import check_pole, check_trait, parse_numbers, read_jsonl, write_text_atomic
    from npti_lens.score import to_csv

    trait, pole = check_trait(args.trait), check_pole(args.pole)
    gammas = parse_numbers(args.gammas, "--gammas")
    out = _fresh_dir(args.out, args.overwrite, holds="capability.csv")
    if not args.texts and not args.choices:
        raise UserError("npti analyze capability: pass --texts (perplexity) and/or --choices (accuracy)")
    rows = []
    if args.texts:
        rows = read_jsonl(args.texts, what='JSON lines like {"question": "...", "answer": "..."}')
    for r in rows:
        if not isinstance(r.get("question"), str) or not isinstance(r.get("answer"), str):
            raise UserError(f'{args.texts}:{r["_line"]}: needs "question" and "answer" text')
    choices = load_choice_items(args.choices) if args.choices else []
    target, opp = load_pair(args.neurons, trait, pole)
    proto = protocol_of(args)
    model = load_model_for(args, proto)
    result = retention(
        model,
        target,
        opp,
        [(r["question"], r["answer"]) for r in rows],
        gammas,
        allow_other_model=args.allow_other_model,
        choices=choices,
        rules=proto.induce_config(),
    )
    write_text_atomic(out / "capability.csv", to_csv(result.rows))
    print(result.to_frame().to_string(index=False))
    print(f"-> {out / 'capability.csv'}")


def cmd_figures(args: argparse.Namespace) -> None:
    from npti_lens import figures
    from npti_lens.io import read_json

    out = Path(args.out)
    made = []
    if args.neurons:
        from npti_lens.analysis import layer_distribution, overlap
        from npti_lens.neurons import load_neuron_sets

        sets = load_neuron_sets(args.neurons)
        made.append(figures.layer_distribution(layer_distribution(sets), out / "layers.png"))
        made.append(figures.overlap_heatmap(overlap(sets), out / "overlap_jaccard.png"))
    if args.demo:
        demo = read_json(Path(args.demo) / "demo_results.json")
        rows = demo.get("rows")
        if not rows:
            raise UserError(f"--demo: {args.demo}/demo_results.json holds no rows; run npti demo first")
        made.append(figures.gamma_sweep(rows, out / "gamma_sweep.png"))
        if any(r["condition"] == "simple" for r in rows):  # demos of version 0.1 lack the simple prompt
            scored = [{**r, "score": r["target"]} for r in rows]
            gamma = args.gamma if args.gamma is not None else demo.get("config", {}).get("compare_gamma", 3.0)
            made.append(_method_figure(scored, out / "method_comparison.png", gamma, "target-pole fraction"))
    if args.scores:
        rows = []
        for folder in args.scores:
            for r in _read_summary(Path(folder) / "summary.csv"):
                rows.append({**r, "score": r["trait_score_mean"], "sem": r["trait_score_sem"]})
        made.append(_method_figure(rows, out / "method_comparison.png", args.gamma, "trait score"))
    if not made:
        raise UserError(
            "npti figures: nothing to draw; pass --neurons NEURONS, --demo DEMO_DIR and/or --scores DIR"
        )
    for path in made:
        print(path)


def _read_summary(path: Path) -> list[dict[str, Any]]:
    import csv

    if not path.is_file():
        raise UserError(f"--scores: {path} not found; pass folders written by npti score")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows, start=2):
        if not r.get("trait") or not r.get("condition") or not r.get("trait_score_mean"):
            raise UserError(
                f"{path}:{i}: needs trait, pole, condition and trait_score_mean (a npti score summary)"
            )
        r["gamma"] = float(r["gamma"]) if r.get("gamma") else None
    return rows


def _method_figure(rows: list[dict[str, Any]], path: Path, gamma: float | None, ylabel: str) -> Path:
    from npti_lens import figures

    try:
        return figures.method_comparison(rows, path, gamma=gamma, ylabel=ylabel)
    except ValueError as e:
        raise UserError(f"method comparison: {e}; choose it with --gamma") from None


def cmd_organism_data(args: argparse.Namespace) -> None:
    from npti_lens.organism.demo import write_data

    out = _fresh_dir(args.out, args.overwrite, holds="personas.jsonl")
    search, test, personas = write_data(out, args.n_search, args.seed)
    print(f"questions: {search}/ (search), {test}/ (held out); personas: {personas}")


def cmd_data_build(args: argparse.Namespace) -> None:
    from npti_lens.databuild import BuildConfig, build_questions
    from npti_lens.llm import ChatConfig

    res = build_questions(config_from(args, BuildConfig), config_from(args, ChatConfig), args.out)
    for trait, qs in res.questions.items():
        print(f"{trait:<18}{len(qs)} questions")
    print(
        f"{res.sent} requests sent ({res.retries} retries), {res.cached} replies from the ledger, "
        f"{res.rejected} replies rejected as duplicates or without a question -> {args.out}"
    )
    for facet, n in res.short.items():
        print(f"warning: {facet} is {n} questions short (its statement x topic pairs ran out; add --topics)")


def cmd_data_sample(args: argparse.Namespace) -> None:
    import shutil

    from npti_lens.data import SAMPLE_DIR

    out = _fresh_dir(args.out, args.overwrite)
    shutil.copytree(SAMPLE_DIR, out, dirs_exist_ok=True)
    print(f"questions: {out}/search/, {out}/test/ (Trait.json); personas: {out}/personas.jsonl")


def cmd_inventory(args: argparse.Namespace) -> None:
    from npti_lens import figures
    from npti_lens.administer import InventoryConfig, measure
    from npti_lens.induce import induce, load_pair
    from npti_lens.inventory import load_inventory
    from npti_lens.io import check_pole, check_trait

    out = _fresh_dir(args.out, args.overwrite, holds="domains.csv")
    items = load_inventory(args.inventory)
    cfg = config_from(args, InventoryConfig)
    cfg.check()
    proto = protocol_of(args)  # the inventory's own item prompt; the protocol's induction rules
    pairs, name = [], ""
    if args.neurons or args.trait or args.pole:
        if not (args.neurons and args.trait and args.pole):
            raise UserError("--neurons, --trait and --pole go together (an induction needs all three)")
        traits = [check_trait(t.strip()) for t in args.trait.split(",")]
        poles = [check_pole(p.strip()) for p in args.pole.split(",")]
        poles = poles * len(traits) if len(poles) == 1 else poles
        if len(poles) != len(traits):
            raise UserError(f"--pole: give one pole, or one per trait of --trait ({len(traits)})")
        pairs = [load_pair(args.neurons, t, p) for t, p in zip(traits, poles, strict=True)]
        icfg = induce_config(args, proto)
        name = "+".join(f"{t}_{p}" for t, p in zip(traits, poles, strict=True)) + f" gamma={icfg.gamma:g}"
    model = load_model_for(args, proto)
    inductions = {}
    if pairs:
        inductions[name] = lambda: induce(model, pairs, icfg, allow_other_model=args.allow_other_model)
    result = measure(model, items, cfg, inductions, progress=True)
    files = result.save(out)
    rows = result.domain_rows()
    files["figure"] = figures.inventory_profile(rows, out / "profile.png")
    print(f"{'condition':<36}{'domain':<19}{'score':>6}  {'95% CI':<13}{'alpha':>6}{'mass':>6}{'shift':>7}")
    for r in rows:
        shift = f"{r['shift']:+7.2f}" if "shift" in r else ""
        ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        print(
            f"{r['condition']:<36}{r['domain']:<19}{r['score']:6.2f}  {ci:<13}{r['alpha']:6.2f}{r['option_mass']:6.2f}{shift}"
        )
    low = [r for r in rows if not r["option_mass"] >= 0.5]
    if low:
        print(
            f"warning: under half of the probability is on the options 1-5 for {len(low)} of {len(rows)} rows: "
            "the model is mostly not answering with a number, so read those scores with care"
        )
    for what, path in files.items():
        print(f"{what:<9}{path}")


# ----- parser ----------------------------------------------------------------------------------


def add_target_flags(p: argparse.ArgumentParser) -> None:
    """The flags naming the pole to induce and where its neuron sets are (induce, analyze ...)."""
    p.add_argument("--neurons", required=True, help="folder of neuron sets (npti select)")
    p.add_argument("--trait", required=True, help="trait to induce")
    p.add_argument("--pole", required=True, help="high or low")
    p.add_argument(
        "--allow-other-model",
        action="store_true",
        help="apply neuron sets selected on another model of the same shape",
    )


def build_parser() -> argparse.ArgumentParser:
    from npti_lens import __version__
    from npti_lens.administer import InventoryConfig
    from npti_lens.databuild import BuildConfig
    from npti_lens.generate import GenerateConfig
    from npti_lens.induce import InduceConfig
    from npti_lens.llm import ChatConfig
    from npti_lens.model import ModelConfig
    from npti_lens.neurons import REFERENCE_D_MLP, REFERENCE_MODEL, REFERENCE_N_LAYERS
    from npti_lens.search import SearchConfig
    from npti_lens.select import SelectConfig

    parser = _Parser(prog="npti", description="Neuron-based personality trait induction on TransformerLens.")
    parser.add_argument("--version", action="version", version=f"npti_lens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(
        name: str, fn: Callable[[argparse.Namespace], None], help_text: str, under: Any = None
    ) -> argparse.ArgumentParser:
        """A subcommand (of `npti`, or of the group `under`) whose help text is also its description."""
        p = (under or sub).add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        return p

    p = command("search", cmd_search, "answer questions under persona prompts and record neuron statistics")
    p.add_argument("--questions", required=True, help="folder of {Trait}.json question files (JSON lines)")
    p.add_argument("--personas", required=True, help="JSON-lines file of persona descriptions per pole key")
    p.add_argument("--out", required=True, help="run folder (answers/ and stats/)")
    p.add_argument("--resume", action="store_true", help="continue the run already in --out")
    add_config(p, ModelConfig)
    add_protocol_flag(p)
    add_config(p, SearchConfig)
    add_config(p, GenerateConfig, from_protocol=FROM_PROTOCOL)

    p = command("select", cmd_select, "select the neurons of every trait pole of a search run")
    p.add_argument("run", metavar="RUN", help="run folder written by npti search")
    p.add_argument("--out", required=True, help="folder for the neuron sets ({Trait}_{pole}/)")
    p.add_argument("--overwrite", action="store_true", help="replace sets already in --out")
    add_config(p, SelectConfig)

    for name, fn, help_text in (
        ("generate", cmd_generate, "answer questions with the neutral prompt, no intervention"),
        ("induce", cmd_induce, "answer questions with the neutral prompt while inducing a trait pole"),
    ):
        p = command(name, fn, help_text)
        p.add_argument("--questions", required=True, help="JSON-lines file of questions")
        p.add_argument("--out", required=True, help="JSON-lines output file")
        p.add_argument("--limit", type=int, default=None, help="answer at most this many questions")
        p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
        if name == "induce":
            add_target_flags(p)
            add_config(p, InduceConfig, from_protocol=FROM_PROTOCOL)
        add_config(p, ModelConfig)
        add_protocol_flag(p)
        add_config(p, GenerateConfig, from_protocol=FROM_PROTOCOL)

    from npti_lens.organism.demo import DemoConfig
    from npti_lens.organism.train import TrainConfig

    p = command("score", cmd_score, "score a generations file with a judge (scores.jsonl, summary.csv)")
    p.add_argument("generations", metavar="GEN.jsonl", help="output of npti generate / induce / baseline")
    p.add_argument("--out", required=True, help="folder for scores.jsonl and summary.csv")
    p.add_argument("--judge", default="organism", help="organism, or openai (an OpenAI-compatible LLM judge)")
    p.add_argument("--trait", default=None, help="judge every row against this trait (default: the row's)")
    p.add_argument("--pole", default=None, help="judge every row against this pole (default: the row's)")
    p.add_argument("--overwrite", action="store_true", help="replace scores of another file already in --out")
    add_config(p, ChatConfig)  # --judge openai only; the key comes from OPENAI_API_KEY
    p.add_argument(
        "--protocol",
        default=None,
        help="--judge openai: the judge prompts of this protocol; " + PROTOCOL_HELP,
    )

    p = command("demo", cmd_demo, "the whole method on the shipped organism, in minutes on a CPU")
    p.add_argument("--out", default="npti_demo", help="folder for the run, tables and figure")
    p.add_argument("--overwrite", action="store_true", help="write over a demo already in --out")
    add_config(p, DemoConfig)

    p = command("organism", lambda a: None, "the shipped model organism")
    osub = p.add_subparsers(dest="organism_command", required=True, parser_class=_Parser)
    p = command("train", cmd_organism_train, "train the organism from its corpus (CPU, fixed seed)", osub)
    p.add_argument("--out", required=True, help="folder for the weights and tokenizer")
    p.add_argument("--overwrite", action="store_true", help="replace weights already in --out")
    add_config(p, TrainConfig)
    p = command(
        "data", cmd_organism_data, "write the organism's questions and personas in the reference layout", osub
    )
    p.add_argument("--out", required=True, help="folder for search/, test/ and personas.jsonl")
    p.add_argument("--n-search", type=int, default=DemoConfig.n_search, help="search questions per trait")
    p.add_argument("--seed", type=int, default=0, help="seed of the persona descriptions")
    p.add_argument("--overwrite", action="store_true", help="replace data already in --out")

    p = command("data", lambda a: None, "question and persona data")
    dsub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    p = command("build", cmd_data_build, "make situational questions with an OpenAI-compatible model", dsub)
    p.add_argument("--out", required=True, help="folder for search/, test/ and the build ledger")
    add_config(p, BuildConfig)
    add_config(p, ChatConfig)
    p = command("sample", cmd_data_sample, "copy the shipped sample questions and personas", dsub)
    p.add_argument("--out", required=True, help="folder for search/, test/ and personas.jsonl")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")

    p = command(
        "inventory",
        cmd_inventory,
        "a Big Five profile from a rated inventory (option probabilities, no sampling)",
    )
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
    add_config(p, InduceConfig, from_protocol=FROM_PROTOCOL)
    add_config(p, InventoryConfig)

    p = command("analyze", lambda a: None, "analyses of neuron sets")
    asub = p.add_subparsers(dest="analyze_command", required=True, parser_class=_Parser)
    for name, fn, help_text in (
        ("overlap", cmd_analyze_overlap, "shared neurons, Jaccard, overlap coefficient, significance"),
        ("layers", cmd_analyze_layers, "neurons per layer of every pole"),
    ):
        p = command(name, fn, help_text, asub)
        p.add_argument("neurons", metavar="NEURONS", help="folder of neuron sets ({Trait}_{pole}/)")
        p.add_argument("--out", required=True, help="folder for the CSV tables and the figure")

    from npti_lens.ablation import AblationConfig

    p = command(
        "capability",
        cmd_analyze_capability,
        "perplexity of reference answers with and without an induction",
        asub,
    )
    add_target_flags(p)
    p.add_argument("--texts", default=None, help="JSON lines with question and reference answer (perplexity)")
    p.add_argument(
        "--choices", default=None, help="JSON lines with question, choices and answer index (accuracy)"
    )
    p.add_argument("--gammas", default="0.6,1.0,1.5", help="comma-separated gammas (default: 0.6,1.0,1.5)")
    p.add_argument("--out", required=True, help="folder for capability.csv")
    p.add_argument("--overwrite", action="store_true", help="replace a capability.csv already in --out")
    add_config(p, ModelConfig)
    add_protocol_flag(p)

    p = command(
        "ablation", cmd_analyze_ablation, "answer questions under every ablation of an induction", asub
    )
    add_target_flags(p)
    p.add_argument("--questions", required=True, help="JSON-lines file of questions")
    p.add_argument("--out", required=True, help="folder for generations.jsonl (and scores)")
    p.add_argument("--limit", type=int, default=None, help="answer at most this many questions")
    p.add_argument("--judge", default=None, help="score the answers too (organism)")
    p.add_argument("--overwrite", action="store_true", help="replace an ablation already in --out")
    add_config(p, AblationConfig)
    add_config(p, ModelConfig)
    add_protocol_flag(p)
    add_config(p, GenerateConfig, from_protocol=FROM_PROTOCOL)

    p = command("figures", cmd_figures, "paper figures from stored results (PNG; PDF where noted)")
    p.add_argument("--out", required=True, help="folder for the figures")
    p.add_argument("--neurons", default=None, help="neuron sets: layer distribution and overlap heatmap")
    p.add_argument(
        "--demo", default=None, help="a npti demo folder: the gamma sweep and the method comparison"
    )
    p.add_argument(
        "--scores",
        nargs="+",
        default=None,
        help="npti score folders (none, simple, p2, npti, random): method comparison",
    )
    p.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="gamma of NPTI in the method comparison (demo: its --compare-gamma)",
    )

    p = command(
        "baseline", cmd_baseline, "answer under a prompt baseline: simple (an adjective) or p2 (a persona)"
    )
    p.add_argument(
        "--method",
        required=True,
        help="simple (an adjective phrase), p2 (a persona description, as the released code ran P2) or "
        "p2-as-written (the released TEMPLATE_p2, which its loop never used)",
    )
    p.add_argument("--trait", required=True, help="trait of the prompt")
    p.add_argument("--pole", required=True, help="high or low")
    p.add_argument("--questions", required=True, help="JSON-lines file of questions")
    p.add_argument("--personas", default=None, help="p2: JSON-lines persona file (pole keys -> descriptions)")
    p.add_argument("--out", required=True, help="JSON-lines output file")
    p.add_argument("--limit", type=int, default=None, help="answer at most this many questions")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_config(p, ModelConfig)
    add_protocol_flag(p)
    add_config(p, GenerateConfig, from_protocol=FROM_PROTOCOL)

    p = command("import-npti", cmd_import_npti, "convert the reference's neuron_results folder")
    p.add_argument("dir", metavar="DIR", help="folder of {Trait}[_reversed]_dict.json[.gz] files")
    p.add_argument("--out", required=True, help="folder for the neuron sets")
    p.add_argument("--model-name", default=REFERENCE_MODEL, help="model the sets belong to")
    p.add_argument("--n-layers", type=int, default=REFERENCE_N_LAYERS, help="layers of that model")
    p.add_argument("--d-mlp", type=int, default=REFERENCE_D_MLP, help="MLP neurons per layer")
    p.add_argument("--overwrite", action="store_true", help="replace sets already in --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bar; ours stay
    import warnings

    def show(message: Warning | str, category: type, *rest: Any, **kw: Any) -> None:
        print(f"npti {args.command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show  # library warnings as one line each, not with source lines
    try:
        args.func(args)
    except UserError as e:
        print(f"npti {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if args.command == "search":
            hint = f"; what was answered is kept: run the same command with --resume to continue {args.out}"
        print(f"npti {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
