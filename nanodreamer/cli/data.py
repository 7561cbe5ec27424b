"""Data subcommands: `collect`, `data info | verify | import | export`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from nanodreamer.cli.flags import add_settings_flags, check_gas_cap, command, group, with_flags
from nanodreamer.data import EpisodeStore, collect, summarize, verify
from nanodreamer.data.minari_io import export_minari, import_minari
from nanodreamer.data.video import import_videos
from nanodreamer.errors import UserError
from nanodreamer.eval.agent import AgentPolicy
from nanodreamer.recipes import EnvSettings

ENV_OWN = EnvSettings(action_repeat=1, max_episode_steps=None, max_gas=None)  # unless flagged


def add_commands(sub) -> None:
    p = command(sub, "collect", cmd_collect, "collect episodes into a dataset folder")
    envs = "car-racing, multi-car-racing, dot, atari:Game or a Gym id"
    p.add_argument("--env", default="car-racing", help=envs)
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--episodes", type=int, help="episodes (one per car and race)")
    amount.add_argument("--steps", type=int, help="agent steps (running episodes kept, cut)")
    p.add_argument("--num-cars", type=int, help="cars per race for multi-car-racing (default 2)")
    p.add_argument("--out", required=True, help="dataset folder (created, or appended to)")
    p.add_argument("--workers", type=int, default=1, help="parallel environments")
    p.add_argument("--seed", type=int, default=0)
    add_settings_flags(p, ENV_OWN, show=False)
    p.add_argument("--policy", help="act with this agent run instead of randomly")
    p.add_argument(
        "--frames",
        help="also keep every stepped frame (all repeats of each action) in this dataset folder, "
        "action-free: the tokenizer's data",
    )

    data = group(sub, "data", "inspect, check, import and export datasets")
    p = command(data, "info", cmd_data_info, "episodes, frames, lengths, returns, actions, size")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p = command(data, "verify", cmd_data_verify, "read all episodes back; --repair moves bad ones")
    p.add_argument("dir")
    p.add_argument("--repair", action="store_true")
    imports = group(data, "import", "bring video or a Minari dataset in")
    p = command(imports, "video", cmd_import_video, "videos or frame folders, action-free")
    p.add_argument("paths", nargs="+", metavar="PATH", help="mp4/webm/gif files, frame folders")
    p.add_argument("--out", required=True, help="dataset folder (created, or appended to)")
    p.add_argument("--resolution", type=int, help="square frame size (new datasets: 64)")
    p = command(imports, "minari", cmd_import_minari, "a local Minari dataset of images")
    p.add_argument("dataset", help="Minari dataset id")
    p.add_argument("--out", required=True, help="new dataset folder")
    exports = group(data, "export", "write a dataset in another format")
    p = command(exports, "minari", cmd_export_minari, "a local Minari dataset (Minari, TorchRL)")
    p.add_argument("dir")
    p.add_argument("--dataset-id", required=True, help="e.g. car-racing/random-v0")


def cmd_collect(args: argparse.Namespace) -> None:
    check_gas_cap(args.env, hasattr(args, "max_gas"))
    options = with_flags(args, ENV_OWN).options(args.env)
    if args.num_cars is not None:
        if args.env != "multi-car-racing":
            raise UserError("--num-cars is for --env multi-car-racing only")
        options["num_cars"] = args.num_cars
    policy = None
    if args.policy:
        cars = args.num_cars or 1  # one policy context per car stream
        races = -(-args.episodes // cars) if args.episodes else args.workers
        policy = AgentPolicy(args.policy, num_envs=min(args.workers, races) * cars)
    given = {k: getattr(args, k) for k in ("steps", "workers", "seed", "frames")}
    store = collect(args.env, args.out, args.episodes, env_options=options, policy=policy, **given)
    info = summarize(store)
    print(f"{args.out}: {info['episodes']} episodes, {info['frames']} frames")
    if args.frames:
        print(f"{args.frames}: {summarize(EpisodeStore(args.frames))['frames']} frames")


def cmd_data_info(args: argparse.Namespace) -> None:
    info = summarize(EpisodeStore(args.dir))
    print(json.dumps(info, indent=1) if args.json else format_summary(info))


def format_summary(info: dict) -> str:
    def fmt(stats: dict) -> str:
        if stats["mean"] is None:
            return "-"
        values = {k: ",".join(f"{v:.3g}" for v in np.atleast_1d(x)) for k, x in stats.items()}
        return "  ".join(f"{k}={v}" for k, v in values.items())

    rows = {
        "dataset": info["path"],
        "env": f"{info['env']} {info['env_options']}",
        "obs": f"{'x'.join(map(str, info['obs_shape']))} uint8, action_dim {info['action_dim']}, "
        f"bins {info['action_bins'] or 'continuous'}",
        "episodes": f"{info['episodes']} ({info['terminated_episodes']} terminated, "
        f"{info['episodes'] - info['labelled_episodes']} action-free)",
        "frames": info["frames"],
        "length": fmt(info["episode_length"]),
        "return": fmt(info["episode_return"]),
        "action": fmt(info["action"]),
        "on disk": f"{info['bytes_on_disk'] / 2**20:.1f} MiB",
    }
    return "\n".join(f"{k:<13}{v}" for k, v in rows.items())


def cmd_data_verify(args: argparse.Namespace) -> None:
    problems = verify(args.dir, repair=args.repair)
    for line in problems:
        print(line)
    if not problems:
        print(f"{args.dir}: all episodes read back intact")
    elif args.repair:
        print(f"moved {len(problems)} damaged episode(s) to {Path(args.dir) / 'corrupt'}")
    else:
        sys.exit(1)


def cmd_import_video(args: argparse.Namespace) -> None:
    added, errors = import_videos(args.paths, args.out, args.resolution)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    frames = sum(EpisodeStore(args.out).lengths[added]) if added else 0
    print(f"{args.out}: {len(added)} action-free episodes ({frames} frames) imported")
    if errors:
        sys.exit(1)


def cmd_import_minari(args: argparse.Namespace) -> None:
    store = import_minari(args.dataset, args.out)
    print(f"{args.out}: {len(store)} episodes ({store.frames} frames) from {args.dataset}")


def cmd_export_minari(args: argparse.Namespace) -> None:
    dataset = export_minari(args.dir, args.dataset_id)
    print(
        f"{args.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps "
        f"(minari.load_dataset({args.dataset_id!r}))"
    )
