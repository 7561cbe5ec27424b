"""`nanodreamer` command line: one subcommand per job. Each module of this package holds a group
of subcommands, their flags beside their handlers: `data` (collect, data info | verify |
import | export), `train` (the four phases), `evaluate` (eval ..., imagine) and `pipeline`
(rounds, demo, pack, play)."""

from __future__ import annotations

import argparse
import sys
import warnings

from nanodreamer.cli import data, evaluate, pipeline, train
from nanodreamer.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanodreamer",
        description="Dreamer 4: collect data, train world models and agents, evaluate, play.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (data, train, evaluate, pipeline):
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
