"""Flags shared by several subcommands, and flags generated from the typed configs of
`recipes` (one flag per field: its name, type, choices and help come from the dataclass)."""

from __future__ import annotations

import argparse
from dataclasses import fields, is_dataclass, replace

from nanodreamer.errors import UserError
from nanodreamer.recipes import RECIPES

TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def field_type(annotation: str):
    """argparse type of a field annotated `int`, `float | None`, ...: 'none' gives None."""
    kind = TYPES[annotation.split("|")[0].strip()]
    if "None" not in annotation:
        return kind

    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_settings_flags(
    parser: argparse.ArgumentParser, settings, skip=(), show=True, prefix=""
) -> None:
    """One `--field-name` per `knob` field of the dataclass `settings` (nested ones flattened;
    a bool also gets `--no-field-name`), stored under its place ("field" or "section.field")
    only when given; `show` adds the value of `settings` (the car-racing recipe's) to the help."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if is_dataclass(value):
            add_settings_flags(parser, value, skip, show, f"{prefix}{f.name}.")
        elif "help" in f.metadata and f.name not in skip:
            kind, choices = field_type(f.type), f.metadata["choices"]
            typed = {"action": argparse.BooleanOptionalAction} if kind is bool else {
                "type": kind, "choices": choices, "metavar": None if choices else f.name.upper()
            }  # fmt: skip
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=prefix + f.name,
                default=argparse.SUPPRESS,
                help=f.metadata["help"] + (f" (car-racing: {value})" if show else ""),
                **typed,
            )


def with_flags(args: argparse.Namespace, settings, prefix=""):
    """`settings` (a dataclass) with every knob whose flag was given set to its value."""
    changes = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if is_dataclass(value):
            changes[f.name] = with_flags(args, value, f"{prefix}{f.name}.")
        elif "help" in f.metadata and hasattr(args, prefix + f.name):  # a knob's flag, given
            changes[f.name] = getattr(args, prefix + f.name)
    return replace(settings, **changes)


def command(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """Subcommand `name`, run by `func(args)`."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(func=func)
    return p


def group(sub, name: str, help: str):
    """Subcommand `name` whose own subcommands do the work."""
    return sub.add_parser(name, help=help).add_subparsers(dest=f"{name}_command", required=True)


def add_recipe_flag(parser: argparse.ArgumentParser, default: str | None = "car-racing") -> None:
    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default=default,
        help="named settings (recipes.py); every flag below overrides one of them"
        + ("" if default else " (default: the env's own, or one derived from its spaces)"),
    )


def add_run_or_pretrained(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--run", help=what)
    group.add_argument(
        "--pretrained", metavar="NAME", help="a folder shipped in nanodreamer/pretrained/ (pack)"
    )


def add_split_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split",
        choices=["val", "all"],
        default="val",
        help="all: every episode (for a separate held-out dataset)",
    )


def check_gas_cap(env: str, given: bool) -> None:
    if given and env != "car-racing":
        raise UserError("--max-gas is for --env car-racing only")
