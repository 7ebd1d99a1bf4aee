"""Commands around the shipped organism and the data: demo, organism train/data, data build/sample."""

from __future__ import annotations

import argparse
import shutil
import typing
from typing import Any

from npti_lens.cli._common import (
    Command,
    add_config,
    add_engine_flags,
    close_engine,
    config_from,
    fresh_dir,
    load_model_for,
    writable_dir,
)
from npti_lens.core.errors import UserError


def demo_flags(p: argparse.ArgumentParser) -> None:
    import dataclasses

    from npti_lens.demos.organism import DemoConfig
    from npti_lens.demos.real import RealDemoConfig
    from npti_lens.model.load import ModelConfig

    p.add_argument("--out", default="npti_demo", help="folder for the run, tables and figure")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write over a demo already in --out (a real model's demo there continues without it)",
    )
    p.add_argument(
        "--model",
        default="organism",
        help="organism (the default), or a real model: smollm2, a .gguf file, a folder of HF weights, a hub id",
    )
    add_config(p, ModelConfig)
    add_engine_flags(p)
    # one flag per field of either demo's config; unset, each demo takes its own default
    organism = {f.name: f for f in dataclasses.fields(DemoConfig)}
    real = {f.name: f for f in dataclasses.fields(RealDemoConfig)}
    hints = {**typing.get_type_hints(DemoConfig), **typing.get_type_hints(RealDemoConfig)}
    for name in [*organism, *(n for n in real if n not in organism)]:
        f = organism.get(name) or real[name]
        where = []
        if name in organism:
            where.append(f"{organism[name].default} on the organism")
        if name in real:
            where.append(f"{real[name].default} on a real model")
        only = "" if name in organism and name in real else " only"
        help_text = f.metadata.get("help", "").replace("%", "%%")
        kind = next((a for a in typing.get_args(hints[name]) if a is not type(None)), hints[name])
        p.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, default=None,
            help=f"{help_text} (default: {', '.join(where)}{only})",
        )  # fmt: skip


def _demo_config(args: argparse.Namespace, cls: type, other: type) -> Any:
    """`cls` from the flags given; a flag only the other demo has is an error."""
    import dataclasses

    mine = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(other):
        if f.name not in mine and getattr(args, f.name) is not None:
            which = (
                "a real model (--model smollm2, ...)" if cls.__name__ == "DemoConfig" else "--model organism"
            )
            raise UserError(f"--{f.name.replace('_', '-')}: only with {which}")
    return cls(**{n: getattr(args, n) for n in mine if getattr(args, n) is not None})


def demo(args: argparse.Namespace) -> None:
    from npti_lens.demos.organism import RESULTS_CSV, DemoConfig, run_demo, summary_lines
    from npti_lens.demos.real import RealDemoConfig

    if args.model != "organism":
        from npti_lens.demos.real import STATE_FILE

        # a folder holding a demo continues it (or tables it for other traits): its answers are
        # checkpoints; a demo of another model or config there is refused by run_real_demo
        out = writable_dir(args.out)
        if not (out / STATE_FILE).is_file():
            out = fresh_dir(args.out, args.overwrite, holds=RESULTS_CSV)
        return _real_demo(args, out, _demo_config(args, RealDemoConfig, DemoConfig))
    out = fresh_dir(args.out, args.overwrite, holds=RESULTS_CSV)
    if args.engine != "tl":
        raise UserError("--engine: the organism demo runs on the TL engine (its word vocabulary)")
    result = run_demo(_demo_config(args, DemoConfig, RealDemoConfig), out, progress=True)
    print(result.table())
    print()
    print("the organism judge's positive control (the P2 prompt on the held-out questions):")
    for line in result.control.lines():
        print("  " + line)
    print()
    print("per cell: NPTI against no intervention and against the random controls (paired over questions):")
    print(result.evidence_table())
    print()
    print("mean over the 5 traits x 2 poles (cells differ: read the table above):")
    for line in summary_lines(result):
        print("  " + line)
    print()
    for what, path in result.files.items():
        print(f"{what:<12}{path}")


def _real_demo(args: argparse.Namespace, out: Any, cfg: Any) -> None:
    import time

    from npti_lens.demos.real import needs_tl, run_real_demo
    from npti_lens.method.protocol import load_protocol
    from npti_lens.model.load import load_model

    start = time.time()
    needs_tl(cfg)  # a --judge folder that is not a classifier: one line before any model loads
    model = load_model_for(args, load_protocol("npti"), records=True)
    try:
        tl = None
        if needs_tl(cfg) and args.engine != "tl":
            tl = load_model(
                args.model
            )  # the vector baseline and the hidden reader: the TL loop, same weights
        result = run_real_demo(model, cfg, out, tl_model=tl, progress=True)
    finally:
        close_engine(model)
    print(result.table())
    print()
    print(
        "the judge's positive control (the P2 prompt on the held-out questions; a pole it does not see is judge blind):"
    )
    for line in result.control.lines():
        print("  " + line)
    print()
    print(
        "per cell, at the chosen strength: against no intervention and the random controls (paired over questions),"
        " the smallest change each comparison could see (MDE, 80% power), and NPTI's effect as a share of P2's:"
    )
    print(result.evidence_table())
    print()
    print("strength chosen per pole (largest effect with mean fluency >= the floor) and where fluency broke:")
    for c in result.choices:
        print(
            f"  {c['method']:<7}{c['trait']:<18}{c['pole']:<6}chosen {c['chosen']}, fluency broke at {c['broke_at']}"
        )
    print()
    print("the judge's validity (held out by question in training; P2 on the test questions):")
    for t, v in result.validity.items():
        print(
            f"  {t:<18}{v['reader']}: held-out AUROC {v['auroc']:.3f}; P2 high vs low AUROC {v['p2_auroc']:.3f}"
        )
    print()
    for what, path in result.files.items():
        print(f"{what:<12}{path}")
    print(f"took {time.time() - start:.0f} s")


def train_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.organism.train import TrainConfig

    p.add_argument("--out", required=True, help="folder for the weights and tokenizer")
    p.add_argument("--overwrite", action="store_true", help="replace weights already in --out")
    add_config(p, TrainConfig)


def train(args: argparse.Namespace) -> None:
    from npti_lens.organism.train import TrainConfig, train

    out = fresh_dir(args.out, args.overwrite, holds="model.safetensors")
    record = train(config_from(args, TrainConfig), out, progress=True)
    print(f"trained in {record['seconds']}s, final loss {record['final_loss']:.4f} -> {args.out}")


def organism_data_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.demos.organism import DemoConfig

    p.add_argument("--out", required=True, help="folder for search/, test/ and personas.jsonl")
    p.add_argument("--n-search", type=int, default=DemoConfig.n_search, help="search questions per trait")
    p.add_argument("--seed", type=int, default=0, help="seed of the persona descriptions")
    p.add_argument("--overwrite", action="store_true", help="replace data already in --out")


def organism_data(args: argparse.Namespace) -> None:
    from npti_lens.organism.corpus import write_data

    out = fresh_dir(args.out, args.overwrite, holds="personas.jsonl")
    search, test, personas = write_data(out, args.n_search, args.seed)
    print(f"questions: {search}/ (search), {test}/ (held out); personas: {personas}")


def build_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.judges.client import ChatConfig
    from npti_lens.workflows.build_questions import BuildConfig

    p.add_argument("--out", required=True, help="folder for search/, test/ and the build ledger")
    add_config(p, BuildConfig)
    add_config(p, ChatConfig)


def build(args: argparse.Namespace) -> None:
    from npti_lens.judges.client import ChatConfig
    from npti_lens.workflows.build_questions import BuildConfig, build_questions

    out = writable_dir(args.out)  # a build resumes from its ledger in --out
    res = build_questions(config_from(args, BuildConfig), config_from(args, ChatConfig), out)
    for trait, qs in res.questions.items():
        print(f"{trait:<18}{len(qs)} questions")
    print(
        f"{res.sent} requests sent ({res.retries} retries), {res.cached} replies from the ledger, "
        f"{res.rejected} replies rejected as duplicates or without a question -> {args.out}"
    )
    for facet, n in res.short.items():
        print(f"warning: {facet} is {n} questions short (its statement x topic pairs ran out; add --topics)")


def sample_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for search/, test/ and personas.jsonl")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")


def sample(args: argparse.Namespace) -> None:
    from npti_lens.inputs.questions import SAMPLE_DIR

    out = fresh_dir(args.out, args.overwrite)
    shutil.copytree(SAMPLE_DIR, out, dirs_exist_ok=True)
    print(f"questions: {out}/search/, {out}/test/ (Trait.json); personas: {out}/personas.jsonl")


COMMANDS = [
    Command(
        ("demo",),
        "the whole method on the organism (minutes) or a real model (--model smollm2)",
        demo_flags,
        demo,
    ),
    Command(
        ("organism", "train"), "train the organism from its corpus (CPU, fixed seed)", train_flags, train
    ),
    Command(
        ("organism", "data"),
        "write the organism's questions and personas in the reference layout",
        organism_data_flags,
        organism_data,
    ),
    Command(
        ("data", "build"), "make situational questions with an OpenAI-compatible model", build_flags, build
    ),
    Command(("data", "sample"), "copy the shipped sample questions and personas", sample_flags, sample),
]
