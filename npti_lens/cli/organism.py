"""Commands around the shipped organism and the data: demo, organism train/data, data build/sample."""

from __future__ import annotations

import argparse
import shutil

from npti_lens.cli._common import Command, add_config, config_from, fresh_dir, writable_dir


def demo_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.demo import DemoConfig

    p.add_argument("--out", default="npti_demo", help="folder for the run, tables and figure")
    p.add_argument("--overwrite", action="store_true", help="write over a demo already in --out")
    add_config(p, DemoConfig)


def demo(args: argparse.Namespace) -> None:
    from npti_lens.demo import RESULTS_CSV, DemoConfig, run_demo, summary_lines

    out = fresh_dir(args.out, args.overwrite, holds=RESULTS_CSV)
    result = run_demo(config_from(args, DemoConfig), out, progress=True)
    print(result.table())
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
    from npti_lens.demo import DemoConfig

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
    from npti_lens.databuild import BuildConfig
    from npti_lens.llm import ChatConfig

    p.add_argument("--out", required=True, help="folder for search/, test/ and the build ledger")
    add_config(p, BuildConfig)
    add_config(p, ChatConfig)


def build(args: argparse.Namespace) -> None:
    from npti_lens.databuild import BuildConfig, build_questions
    from npti_lens.llm import ChatConfig

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
    from npti_lens.bench import SAMPLE_DIR

    out = fresh_dir(args.out, args.overwrite)
    shutil.copytree(SAMPLE_DIR, out, dirs_exist_ok=True)
    print(f"questions: {out}/search/, {out}/test/ (Trait.json); personas: {out}/personas.jsonl")


COMMANDS = [
    Command(("demo",), "the whole method on the shipped organism, in minutes on a CPU", demo_flags, demo),
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
