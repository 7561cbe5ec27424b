"""Whole-pipeline subcommands: `rounds`, `demo`, and sharing the result: `pack`, `play`."""

from __future__ import annotations

import argparse
from dataclasses import replace

from nanodreamer.cli import flags
from nanodreamer.demo import run_demo
from nanodreamer.errors import UserError
from nanodreamer.pipeline import run_rounds
from nanodreamer.play import PlayConfig, serve
from nanodreamer.pretrained import pack, pretrained
from nanodreamer.recipes import RoundsConfig, recipe, recipe_for


def add_commands(sub) -> None:
    p = flags.command(sub, "rounds", cmd_rounds, "rounds of collect, train, evaluate")
    p.add_argument("--out", required=True, help="folder (rerun the same command to resume)")
    flags.add_recipe_flag(p, default=None)
    flags.add_settings_flags(p, RoundsConfig())

    p = flags.command(sub, "demo", cmd_demo, "the whole pipeline on car racing at CPU scale")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=float, default=55, help="time budget (about 50 min wall)")
    p.add_argument("--env", default="car-racing")
    p.add_argument("--episodes", type=int, default=100, help="random episodes to collect")

    p = flags.command(sub, "pack", cmd_pack, "a run as a self-contained pretrained folder")
    p.add_argument("--run", required=True, help="imagination run folder")
    p.add_argument("--out", required=True, help="folder to write (replaced)")
    p.add_argument("--episodes", type=int, default=4, help="held-out episodes to include")

    p = flags.command(sub, "play", cmd_play, "drive inside a world model in the browser")
    flags.add_run_or_pretrained(p, "dynamics (or agent) run folder")
    flags.add_settings_flags(p, PlayConfig(run=""), show=False)
    p.add_argument("--public", action="store_true", help="allow a non-loopback --host")


def cmd_rounds(args: argparse.Namespace) -> None:
    env = getattr(args, "env", "car-racing")
    config = flags.with_flags(args, recipe(args.recipe) if args.recipe else recipe_for(env))
    flags.check_gas_cap(config.env, hasattr(args, "collect.max_gas"))

    def interval(e: dict, who: str) -> str:  # one episode has no interval (null in JSON)
        ci = e[f"{who}return_ci95"]
        return f"{e[f'{who}return_mean']:.1f} ± {'n/a' if ci is None else f'{ci:.1f}'}"

    for r in run_rounds(args.out, config):
        e = r["real_env"]
        print(
            f"round {r['round']}: imagination {interval(e, '')} (acting {e['acting']}), "
            f"BC {interval(e, 'bc_best_')}, random {interval(e, 'random_')}"
        )


def cmd_demo(args: argparse.Namespace) -> None:
    run_demo(args.out, minutes=args.minutes, env=args.env, episodes=args.episodes)


def cmd_pack(args: argparse.Namespace) -> None:
    out = pack(args.run, args.out, args.episodes)
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors")) / 2**20
    print(f"{out}: {size:.1f} MB of weights; use it with --run {out / 'agent'}")


def cmd_play(args: argparse.Namespace) -> None:
    config = flags.with_flags(args, PlayConfig(run=args.run))
    if config.host not in ("127.0.0.1", "localhost", "::1") and not args.public:
        raise UserError(
            f"--host {config.host} would let other machines drive the model: add --public to "
            "mean it, or keep the default 127.0.0.1"
        )
    if args.pretrained:  # its world model and agent are one run; its episodes give start frames
        agent = str(pretrained(args.pretrained) / "agent")
        data = config.data or str(pretrained(args.pretrained) / "data")
        config = replace(config, run=agent, agent=config.agent or agent, data=data)
    serve(config)
