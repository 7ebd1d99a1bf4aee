"""Judging commands: score an answers file with a judge, and train the offline classifier judge."""

from __future__ import annotations

import argparse

from npti_lens.cli._common import PROTOCOL_HELP, Command, add_config, config_from, fresh_dir
from npti_lens.errors import UserError


def score_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.llm import ChatConfig

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
    from npti_lens.io import check_pole, check_trait
    from npti_lens.scoring import score_file

    kwargs: dict = {}
    if args.judge == "organism":
        from npti_lens.model import load_model

        kwargs["model"] = load_model("organism")
    elif args.judge == "openai":
        from npti_lens.llm import ChatConfig
        from npti_lens.protocol import load_protocol

        kwargs.update(cfg=config_from(args, ChatConfig), protocol=load_protocol(args.protocol))
    elif args.judge == "classifier":
        from npti_lens.classifier import Classifier

        kwargs["classifier"] = Classifier.load(args.classifier) if args.classifier else None
        if args.fluency_model:
            from npti_lens.model import load_model

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
    from npti_lens.classifier import ClassifierConfig

    p.add_argument("run", metavar="RUN", help="a search run folder (npti search --out)")
    p.add_argument("--out", required=True, help="folder for the classifier (cfg.json, safetensors)")
    p.add_argument("--traits", default="all", help="'all' or comma-separated traits of the run")
    p.add_argument("--overwrite", action="store_true", help="replace a classifier already in --out")
    add_config(p, ClassifierConfig)


def judge_train(args: argparse.Namespace) -> None:
    from npti_lens.classifier import ClassifierConfig, train
    from npti_lens.constants import CFG_FILE
    from npti_lens.io import parse_traits

    out = fresh_dir(args.out, args.overwrite, holds=CFG_FILE)
    clf = train(args.run, out, parse_traits(args.traits), config_from(args, ClassifierConfig))
    for t, v in clf.cfg["validity"].items():
        print(
            f"{t:<18} held out by question ({v['folds']} folds, {v['n_questions']} questions, {v['n_answers']} answers): "
            f"accuracy {v['accuracy']:.3f}, AUROC {v['auroc']:.3f}, Brier {v['brier']:.3f}, ECE {v['ece']:.3f}"
        )
    print(f"classifier -> {out}")


COMMANDS = [
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
