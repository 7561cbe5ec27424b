"""`nanodreamer` command line: one subcommand per job (the jobs are in `commands.py`)."""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import asdict

from nanodreamer.commands import (
    cmd_collect,
    cmd_data_info,
    cmd_data_verify,
    cmd_demo,
    cmd_eval_agent,
    cmd_eval_dynamics,
    cmd_eval_tokenizer,
    cmd_export_minari,
    cmd_imagine,
    cmd_import_minari,
    cmd_import_video,
    cmd_pack,
    cmd_play,
    cmd_rounds,
    cmd_train_agent,
    cmd_train_dynamics,
    cmd_train_imagination,
    cmd_train_tokenizer,
    train_config,
)
from nanodreamer.errors import UserError
from nanodreamer.pipeline import RoundsConfig

PRIORS = ("bc", "uniform", "data")  # imagination's policy start and KL prior (ImaginationPhase)

__all__ = ["build_parser", "main", "train_config"]


def add_run_or_pretrained(p: argparse.ArgumentParser, what: str) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--run", help=what)
    group.add_argument(
        "--pretrained", metavar="NAME", help="a folder shipped in nanodreamer/pretrained/ (pack)"
    )


ROUNDS_FLAGS = (  # `rounds` flag, its place in RoundsConfig ("field" or "field.key"), help
    ("--env", "env", "environment"),
    ("--rounds", "rounds", "rounds, round 0 included"),
    ("--first-episodes", "first_episodes", "random ones, before round 0"),
    ("--episodes-per-round", "episodes_per_round", "added before each later round"),
    ("--random-share", "random_share", "of those, random-policy ones"),
    ("--minutes", "minutes", "training budget per later round"),
    ("--first-minutes", "first_minutes", "round 0's training budget"),
    ("--eval-episodes", "eval_episodes", "full-length, fresh seeds"),
    ("--workers", "workers", "parallel collection envs"),
    ("--action-repeat", "env_options.action_repeat", "env frames per decision"),
    ("--max-episode-steps", "env_options.max_episode_steps", "cap collected episodes, frames"),
    ("--max-gas", "env_options.max_gas", "car-racing: gas at full throttle"),
    ("--horizon", "imagination.horizon", "imagination horizon"),
    ("--gamma", "imagination.gamma", "imagination discount"),
    ("--beta", "imagination.beta", "KL weight to the prior"),
    ("--sampling-steps", "imagination.steps", "per imagined frame"),
    ("--value-warmup", "imagination.value_warmup", "value-only imagination updates"),
    ("--prior", "imagination.prior", "imagination policy's start and prior"),
    ("--action-bins", "action_bins", "per continuous action dimension"),
    ("--window", "window", "world model's context in decisions"),
    ("--value-gamma", "value_gamma", "phase 2 also fits the value to returns"),
    ("--rollout-frac", "dynamics.rollout_frac", "dynamics windows fed their rollout"),
)


def add_rounds_flags(p: argparse.ArgumentParser) -> None:
    """`ROUNDS_FLAGS`, each stored under its place (cmd_rounds reads them back) and showing the
    recipe's value as its default."""
    recipe = asdict(RoundsConfig())
    for flag, place, what in ROUNDS_FLAGS:
        field, _, key = place.partition(".")
        default = recipe[field][key] if key else recipe[field]
        choices, metavar = (PRIORS, None) if flag == "--prior" else (None, (key or field).upper())
        text = f"{what} ({default})"
        p.add_argument(
            flag, dest=place, type=type(default), choices=choices, metavar=metavar, help=text
        )


def add_train_flags(p: argparse.ArgumentParser, presets=None) -> None:
    p.add_argument("--out", required=True, help="run folder")
    if presets:
        p.add_argument("--data", required=True, help="dataset folder")
        p.add_argument("--preset", choices=list(presets), default="tiny")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--seq-len", type=int, help="frames per training window")
    p.add_argument("--lr", type=float)
    p.add_argument("--minutes", type=float, help="time budget; the LR schedule follows it")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data loader processes")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument(
        "--checkpointing",
        nargs="?",
        const="full",
        choices=["none", "selective", "full"],
        help="activation checkpointing: rerun each block (full, the flag alone) or only its "
        "cheap ops (selective: keeps matmul and attention outputs)",
    )
    p.add_argument(
        "--memory-budget",
        type=float,
        help="with --compile: share (0-1] of the activations to keep; torch.compile "
        "recomputes the cheapest of the rest",
    )
    p.add_argument("--ema", type=float, help="EMA decay of evaluated/exported weights")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


def add_split_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--split",
        choices=["val", "all"],
        default="val",
        help="all: every episode (for a separate held-out dataset)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanodreamer",
        description="Dreamer 4: collect data, train world models and agents, evaluate, play.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="collect episodes into a dataset folder")
    p.add_argument(
        "--env", default="car-racing", help="car-racing, multi-car-racing, dot or a Gym id"
    )
    p.add_argument("--episodes", type=int, required=True, help="episodes (one per car and race)")
    p.add_argument("--num-cars", type=int, help="cars per race for multi-car-racing (default 2)")
    p.add_argument("--out", required=True, help="dataset folder (created, or appended to)")
    p.add_argument("--workers", type=int, default=1, help="parallel environments")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, help="square frame size for Gymnasium envs")
    p.add_argument("--action-repeat", type=int, default=1)
    p.add_argument("--max-episode-steps", type=int, help="truncate episodes at this length")
    p.add_argument("--max-gas", type=float, help="car-racing: gas at full throttle (default 1)")
    p.add_argument("--policy", help="act with this agent run instead of randomly")
    p.add_argument(
        "--frames",
        help="also keep every stepped frame (all repeats of each action) in this dataset folder, "
        "action-free: the tokenizer's data",
    )
    p.set_defaults(func=cmd_collect)

    data = sub.add_parser("data", help="inspect, check, import and export datasets").add_subparsers(
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
    imports = data.add_parser("import", help="bring video or a Minari dataset in").add_subparsers(
        dest="import_command", required=True
    )
    p = imports.add_parser(
        "video", help="video files or frame folders, one action-free episode each"
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="mp4/webm/gif files, frame folders")
    p.add_argument("--out", required=True, help="dataset folder (created, or appended to)")
    p.add_argument("--resolution", type=int, help="square frame size (new datasets: 64)")
    p.set_defaults(func=cmd_import_video)
    p = imports.add_parser("minari", help="a local Minari dataset with image observations")
    p.add_argument("dataset", help="Minari dataset id")
    p.add_argument("--out", required=True, help="new dataset folder")
    p.set_defaults(func=cmd_import_minari)
    exports = data.add_parser("export", help="write a dataset in another format").add_subparsers(
        dest="export_command", required=True
    )
    p = exports.add_parser("minari", help="a local Minari dataset (loads in Minari and TorchRL)")
    p.add_argument("dir")
    p.add_argument("--dataset-id", required=True, help="e.g. car-racing/random-v0")
    p.set_defaults(func=cmd_export_minari)

    from nanodreamer.tokenizer import TOKENIZER_PRESETS

    train = sub.add_parser("train", help="train one phase").add_subparsers(
        dest="train_command", required=True
    )
    p = train.add_parser("tokenizer", help="phase 1a: the causal masked-autoencoder tokenizer")
    add_train_flags(p, TOKENIZER_PRESETS)
    p.add_argument("--lpips", help="perceptual loss: 'lpips' (package) or an exported .pt2 file")
    p.add_argument(
        "--patch", type=int, help="patch size (default: the preset's, 8; 4 for frames under 64 px)"
    )
    p.add_argument("--latents", type=int, help="latent tokens per frame (default: the preset's)")
    p.add_argument("--latent-dim", type=int, help="width of each latent (default: the preset's)")
    p.set_defaults(func=cmd_train_tokenizer)

    from nanodreamer.dynamics import DYNAMICS_PRESETS

    p = train.add_parser("dynamics", help="phase 1b: the interactive dynamics model")
    add_train_flags(p, DYNAMICS_PRESETS)
    p.add_argument("--tokenizer", required=True, help="tokenizer run folder")
    p.add_argument(
        "--long-seq-len", type=int, help="every 8th step's window length (default 2x; 0 = off)"
    )
    p.add_argument(
        "--independent-frac",
        type=float,
        help="windows trained as separate images (default 0.3; 0 puts all into dynamics)",
    )
    p.add_argument(
        "--context-frac",
        type=float,
        help="frames trained at the context signal level, as fed-back frames are at inference "
        "(default 0: every frame's level uniform)",
    )
    p.add_argument(
        "--rollout-frac",
        type=float,
        help="windows whose second half reads the model's own rollout instead of the recorded "
        "latents, as in imagination (default 0)",
    )
    p.add_argument(
        "--residual",
        action="store_true",
        help="predict each frame as the previous one plus a change (starts as copy-last-frame)",
    )
    p.add_argument(
        "--action-in-latents",
        action="store_true",
        help="also add each frame's action embedding to its latent tokens",
    )
    p.add_argument(
        "--action-bins",
        type=int,
        help="bins per continuous action dimension (default 32; discrete actions: one per "
        "choice); each bin's embedding learns only from the actions that fall in it",
    )
    p.add_argument(
        "--labelled-frac",
        type=float,
        help="keep the actions of this share of the labelled episodes, hide the rest "
        "(chosen per episode, fixed by --seed; default 1)",
    )
    p.set_defaults(func=cmd_train_dynamics)

    p = train.add_parser("agent", help="phase 2: behaviour cloning + reward model (MTP)")
    add_train_flags(p)
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--world-model", required=True, help="dynamics run folder")
    p.add_argument(
        "--value-gamma",
        type=float,
        help="also fit the value head to the data's returns with this discount (default: the "
        "value first trains in imagination)",
    )
    p.set_defaults(func=cmd_train_agent)

    p = train.add_parser("imagination", help="phase 3: PMPO inside the frozen world model")
    add_train_flags(p)
    p.add_argument("--run", required=True, help="agent (phase 2) run folder")
    p.add_argument("--horizon", type=int, default=16, help="imagined steps per rollout")
    p.add_argument(
        "--gamma", type=float, default=0.997, help="discount (short episodes: lower, e.g. 0.9)"
    )
    p.add_argument(
        "--beta",
        type=float,
        default=0.3,
        help="weight of KL[policy || prior] (--prior: a broad prior makes it an entropy bonus)",
    )
    p.add_argument(
        "--sampling-steps",
        type=int,
        default=4,
        help="shortcut steps K per imagined frame (fewer: faster, coarser frames)",
    )
    p.add_argument(
        "--value-warmup",
        type=int,
        default=0,
        help="first updates train the value alone, so advantages are not all one sign",
    )
    p.add_argument(
        "--prior",
        choices=PRIORS,
        default="bc",
        help="the policy's start and KL prior: the BC policy (bc), every action alike (uniform: "
        "BC of random data with held actions just repeats the last one), or the data's action "
        "frequencies (data: like uniform, without the actions the data never took)",
    )
    p.set_defaults(func=cmd_train_imagination)

    evaluate = sub.add_parser("eval", help="evaluate a trained run").add_subparsers(
        dest="eval_command", required=True
    )
    p = evaluate.add_parser("tokenizer", help="reconstruction PSNR and SSIM on validation data")
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--windows", type=int, default=32, help="validation windows to score")
    add_split_flag(p)
    p.add_argument(
        "--gif",
        help="default RUN/eval_reconstruction.gif (training writes RUN/reconstruction.gif)",
    )
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_tokenizer)

    p = evaluate.add_parser("dynamics", help="open-loop rollout PSNR, baselines, frames/s")
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--context", type=int, help="real context frames (default min(8, window-1))")
    p.add_argument("--windows", type=int, default=16)
    add_split_flag(p)
    p.add_argument("--steps", type=int, default=4, help="sampling steps K per frame")
    p.add_argument(
        "--gif",
        help="default RUN/eval_imagination.gif (training writes RUN/imagination.gif)",
    )
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_dynamics)

    p = evaluate.add_parser("agent", help="return in the real env beside a random policy")
    add_run_or_pretrained(p, "agent or imagination run folder")
    p.add_argument("--env", required=True)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    acting = p.add_mutually_exclusive_group()  # neither: as the run records (pack), else sample
    acting.add_argument("--mode", action="store_true", default=None, help="most likely actions")
    acting.add_argument(
        "--sample",
        dest="mode",
        action="store_false",
        default=None,
        help="sampled actions (default, unless the run records a choice)",
    )
    p.add_argument(
        "--max-episode-steps", type=int, help="cap episodes (default: the env's own limit)"
    )
    p.add_argument("--video", help="write the first episode as .gif or .mp4")
    p.add_argument("--num-cars", type=int, help="multi-car-racing: cars per race")
    p.add_argument(
        "--opponents",
        choices=("self", "random"),
        default="self",
        help="multi-car-racing: the policy drives every car, or car 0 against random cars",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_agent)

    p = sub.add_parser("imagine", help="real context, then imagined frames beside the truth")
    p.add_argument("--run", required=True, help="dynamics run folder")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="FILE.gif or FILE.mp4")
    p.add_argument("--frames", type=int, default=32, help="imagined frames")
    p.add_argument("--steps", type=int, default=4, help="sampling steps K per frame")
    p.add_argument("--actions", choices=["recorded", "random"], default="recorded")
    p.add_argument("--context", type=int)
    p.add_argument("--samples", type=int, default=4, help="rollouts, one row each")
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.set_defaults(func=cmd_imagine)

    p = sub.add_parser("play", help="drive inside a world model in the browser")
    add_run_or_pretrained(p, "dynamics (or agent) run folder")
    p.add_argument("--data", help="dataset whose episodes give start frames")
    p.add_argument("--agent", help="agent run that can drive (a toggle on the page)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--public", action="store_true", help="allow a non-loopback --host")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--max-sessions", type=int, default=4, help="browser tabs at once")
    p.add_argument("--fps", type=float, default=20.0, help="target frames/s")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per frame")
    p.add_argument("--context", type=int, default=4, help="real start frames from --data")
    p.add_argument("--device")
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("pack", help="an imagination run as a self-contained pretrained folder")
    p.add_argument("--run", required=True, help="imagination run folder")
    p.add_argument("--out", required=True, help="folder to write (replaced)")
    p.add_argument("--episodes", type=int, default=4, help="held-out episodes to include")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser(
        "rounds",
        help="rounds of collect -> train -> evaluate in one folder (defaults: the car-racing "
        "recipe)",
    )
    p.add_argument("--out", required=True, help="folder (rerun the same command to resume)")
    add_rounds_flags(p)
    p.set_defaults(func=cmd_rounds)

    p = sub.add_parser("demo", help="the whole pipeline on car racing at CPU scale")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=float, default=55, help="time budget (about 50 min wall)")
    p.add_argument("--env", default="car-racing")
    p.add_argument("--episodes", type=int, default=100, help="random episodes to collect")
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
