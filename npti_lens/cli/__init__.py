"""The `npti` command: a thin front end over the workflow layer, one module per family of commands.

Each command's flags sit beside its handler (`Command`); they are added only for the command being
parsed, so `npti --help` lists every command without importing torch or TransformerLens.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
import warnings
from collections.abc import Sequence
from typing import Any

from npti_lens.cli import answer, evaluate, figures, method, monitor, organism, score, serve, tune
from npti_lens.cli._common import Command
from npti_lens.core.constants import VERSION
from npti_lens.core.errors import UserError

COMMANDS: list[Command] = [
    *method.COMMANDS,
    *answer.COMMANDS,
    *monitor.COMMANDS,
    *score.COMMANDS,
    *evaluate.COMMANDS,
    *figures.COMMANDS,
    *tune.COMMANDS,
    *organism.COMMANDS,
    *serve.COMMANDS,
]
GROUPS = {
    "organism": "the shipped model organism",
    "data": "question and persona data",
    "analyze": "analyses of neuron sets",
    "judge": "offline judges",
}


THREADS_HELP = (
    "torch CPU threads (default: one for a small model, else the cores free when the model loads; "
    "also NPTI_THREADS)"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _target(argv: Sequence[str]) -> tuple[str, ...]:
    """The command path named on the command line (`("analyze", "ablation")`), as far as it goes."""
    words = [
        w for i, w in enumerate(argv) if not w.startswith("-") and (i == 0 or argv[i - 1] != "--threads")
    ]
    path: tuple[str, ...] = ()
    for w in words:
        if not any(c.path[: len(path) + 1] == (*path, w) for c in COMMANDS):
            break
        path = (*path, w)
    return path


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; the flags of the command that `argv` names are added, the others only listed."""
    wanted = _target(argv)
    parser = _Parser(prog="npti", description="Neuron-based personality trait induction on TransformerLens.")
    parser.add_argument("--version", action="version", version=f"npti_lens {VERSION}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    subs: dict[tuple[str, ...], Any] = {
        (): parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    }
    for cmd in COMMANDS:
        for depth in range(1, len(cmd.path)):
            group = cmd.path[:depth]
            if group not in subs:
                g = subs[group[:-1]].add_parser(
                    group[-1], help=GROUPS[group[-1]], description=GROUPS[group[-1]]
                )
                subs[group] = g.add_subparsers(
                    dest=f"{group[-1]}_command", required=True, parser_class=_Parser
                )
        p = subs[cmd.path[:-1]].add_parser(cmd.path[-1], help=cmd.help, description=cmd.help)
        p.set_defaults(func=cmd.run)
        if cmd.path == wanted:
            cmd.flags(p)
            if "threads" not in {a.dest for a in p._actions}:
                p.add_argument("--threads", type=int, default=argparse.SUPPRESS, help=THREADS_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )

    def show(message: Warning | str, category: type, *rest: Any, **kw: Any) -> None:
        print(f"npti {args.command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show  # library warnings as one line each, not with source lines
    try:
        _threads(args)
        args.func(args)
    except UserError as e:
        print(f"npti {args.command}: error: {e.for_cli()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if args.command == "search":
            hint = f"; what was answered is kept: run the same command with --resume to continue {args.out}"
        print(f"npti {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


def _threads(args: argparse.Namespace) -> None:
    """CPU threads (npti_lens.core.threads), checked before any work; the wait policy before torch loads."""
    import os

    from npti_lens.core import threads

    if os.environ.get(threads.ENV):
        threads.parse_threads(os.environ[threads.ENV], threads.ENV)
    threads.passive_wait_env()
    if args.threads is not None:
        threads.set_threads(threads.parse_threads(args.threads, "--threads"))


if __name__ == "__main__":
    sys.exit(main())
