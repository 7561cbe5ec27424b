"""`nanodreamer` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from nanodreamer.errors import UserError


def cmd_collect(args: argparse.Namespace) -> None:
    from nanodreamer.data import collect, summarize

    options = {"action_repeat": args.action_repeat}
    if args.resolution is not None:
        options["resolution"] = args.resolution
    if args.max_episode_steps is not None:
        options["max_episode_steps"] = args.max_episode_steps
    store = collect(
        args.env, args.out, args.episodes, workers=args.workers, seed=args.seed, env_options=options
    )
    info = summarize(store)
    print(f"{args.out}: {info['episodes']} episodes, {info['frames']} frames")


def cmd_data_info(args: argparse.Namespace) -> None:
    from nanodreamer.data import EpisodeStore, summarize

    info = summarize(EpisodeStore(args.dir))
    if args.json:
        print(json.dumps(info, indent=1))
        return
    print(format_summary(info))


def format_summary(info: dict) -> str:
    def fmt(stats: dict) -> str:
        if stats["mean"] is None:
            return "-"
        values = {k: ",".join(f"{v:.3g}" for v in np.atleast_1d(x)) for k, x in stats.items()}
        return "  ".join(f"{k}={v}" for k, v in values.items())

    return "\n".join(
        [
            f"dataset      {info['path']}",
            f"env          {info['env']} {info['env_options']}",
            f"obs          {'x'.join(map(str, info['obs_shape']))} uint8, action_dim "
            f"{info['action_dim']}, bins {info['action_bins'] or 'continuous'}",
            f"episodes     {info['episodes']} ({info['terminated_episodes']} terminated)",
            f"frames       {info['frames']}",
            f"length       {fmt(info['episode_length'])}",
            f"return       {fmt(info['episode_return'])}",
            f"action       {fmt(info['action'])}",
            f"on disk      {info['bytes_on_disk'] / 2**20:.1f} MiB",
        ]
    )


def cmd_data_verify(args: argparse.Namespace) -> None:
    from nanodreamer.data import verify

    problems = verify(args.dir, repair=args.repair)
    for line in problems:
        print(line)
    if not problems:
        print(f"{args.dir}: all episodes read back intact")
    elif args.repair:
        print(f"moved {len(problems)} damaged episode(s) to {Path(args.dir) / 'corrupt'}")
    else:
        sys.exit(1)


def cmd_demo(args: argparse.Namespace) -> None:
    from nanodreamer.data import collect, summarize

    out = Path(args.out)
    store = collect("car-racing", out / "data", args.episodes, workers=args.workers, seed=0)
    info = summarize(store)
    text = format_summary(info)
    (out / "summary.md").write_text(f"# nanodreamer demo\n\n```\n{text}\n```\n")
    print(text)
    print(f"\ndemo folder: {out.resolve()} (open summary.md first)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanodreamer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="collect episodes into a dataset folder")
    p.add_argument("--env", default="car-racing", help="car-racing or a Gymnasium id")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--out", required=True, help="dataset folder (created, or appended to)")
    p.add_argument("--workers", type=int, default=1, help="parallel environments")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, help="square frame size for Gymnasium envs")
    p.add_argument("--action-repeat", type=int, default=1)
    p.add_argument("--max-episode-steps", type=int, help="truncate episodes at this length")
    p.set_defaults(func=cmd_collect)

    data = sub.add_parser("data", help="inspect and check datasets").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser("info", help="episodes, frames, lengths, returns, actions, size")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_info)
    p = data.add_parser("verify", help="read every episode back; --repair moves damaged ones")
    p.add_argument("dir")
    p.add_argument("--repair", action="store_true")
    p.set_defaults(func=cmd_data_verify)

    p = sub.add_parser("demo", help="the whole pipeline on car racing at CPU scale")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
