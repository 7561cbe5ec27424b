"""Training subcommands: `train tokenizer | dynamics | agent | imagination`. The phases' settings
come from a recipe (`--recipe`, default car-racing: the one that drives), so a phase trained
by hand gets what `rounds` gives it; every flag overrides one setting."""

from __future__ import annotations

import argparse
from dataclasses import replace

from nanodreamer.cli.flags import add_recipe_flag, add_settings_flags, command, group, with_flags
from nanodreamer.data import EpisodeStore
from nanodreamer.data.latents import encode_dataset
from nanodreamer.dynamics import DYNAMICS_PRESETS
from nanodreamer.recipes import AgentSettings, DynamicsSettings, ImaginationSettings, recipe
from nanodreamer.tokenizer import TOKENIZER_PRESETS, load_perceptual
from nanodreamer.train import distributed
from nanodreamer.train import dynamics as dynamics_phase
from nanodreamer.train import tokenizer as tokenizer_phase
from nanodreamer.train.agent import AgentPhase, agent_train_config
from nanodreamer.train.imagination import ImaginationPhase, imagination_train_config
from nanodreamer.train.trainer import TrainConfig, Trainer


def add_train_flags(p: argparse.ArgumentParser, presets=None) -> None:
    """The run folder, the preset (phase 1) and every `TrainConfig` knob (default: the
    preset's or the phase's own)."""
    p.add_argument("--out", required=True, help="run folder")
    if presets:
        p.add_argument("--data", required=True, help="dataset folder")
        p.add_argument("--preset", choices=list(presets), default="tiny")
    add_settings_flags(p, TrainConfig(), show=False)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


def add_commands(sub) -> None:
    train = group(sub, "train", "train one phase")
    p = command(train, "tokenizer", cmd_train_tokenizer, "phase 1a: the causal tokenizer")
    add_train_flags(p, TOKENIZER_PRESETS)
    p.add_argument("--lpips", help="perceptual loss: 'lpips' (package) or an exported .pt2 file")

    p = command(train, "dynamics", cmd_train_dynamics, "phase 1b: the dynamics model")
    add_train_flags(p, DYNAMICS_PRESETS)
    p.add_argument("--tokenizer", required=True, help="tokenizer run folder")
    add_recipe_flag(p)
    add_settings_flags(p, DynamicsSettings(), skip=("window",))  # --seq-len sets it
    long = "every 8th step's window length (default 2x; 0 = off)"
    p.add_argument("--long-seq-len", type=int, help=long)
    hide = "keep the actions of this share of the labelled episodes (per episode, by --seed)"
    p.add_argument("--labelled-frac", type=float, help=hide)

    p = command(train, "agent", cmd_train_agent, "phase 2: BC and reward model (MTP)")
    add_train_flags(p)
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--world-model", required=True, help="dynamics run folder")
    add_recipe_flag(p)
    add_settings_flags(p, AgentSettings())

    p = command(train, "imagination", cmd_train_imagination, "phase 3: PMPO in the world model")
    add_train_flags(p)
    p.add_argument("--run", required=True, help="agent (phase 2) run folder")
    add_recipe_flag(p)
    add_settings_flags(p, ImaginationSettings())


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    cfg = with_flags(args, tokenizer_phase.TRAIN_PRESETS[args.preset])
    preset = TOKENIZER_PRESETS[args.preset]
    config = tokenizer_phase.tokenizer_config_for(args.data, preset, cfg.seq_len)

    def phase(env):
        made = tokenizer_phase.TokenizerPhase(args.data, config, cfg)
        if args.lpips:
            made.model.use_perceptual(load_perceptual(args.lpips).to(env.device))
        return made

    fit(phase, cfg, args)


def cmd_train_dynamics(args: argparse.Namespace) -> None:
    settings = with_flags(args, recipe(args.recipe).dynamics)
    if not hasattr(args, "action_bins") and EpisodeStore(args.data).manifest["action_bins"]:
        settings = replace(settings, action_bins=None)  # a recipe's bins: continuous actions
    cfg = with_flags(args, dynamics_phase.TRAIN_PRESETS[args.preset])
    window = getattr(args, "seq_len", None) or settings.window or cfg.seq_len
    long = 2 * window if args.long_seq_len is None else args.long_seq_len
    cfg = replace(cfg, seq_len=window, long_seq_len=long)
    if args.labelled_frac is not None:
        cfg = replace(cfg, labelled_frac=args.labelled_frac)

    def phase(env):
        if env.main:  # encode once, before the other ranks read the cache
            encode_dataset(args.data, args.tokenizer, env.device)
        env.barrier()
        latents = encode_dataset(args.data, args.tokenizer, env.device)
        preset = DYNAMICS_PRESETS[args.preset]
        config = dynamics_phase.dynamics_config_for(latents, preset, settings, window)
        return dynamics_phase.DynamicsPhase(args.data, args.tokenizer, config, cfg)

    fit(phase, cfg, args)


def cmd_train_agent(args: argparse.Namespace) -> None:
    settings = with_flags(args, recipe(args.recipe).agent)
    cfg = with_flags(args, agent_train_config(args.world_model))
    fit(lambda env: AgentPhase(args.data, args.world_model, cfg, settings), cfg, args)


def cmd_train_imagination(args: argparse.Namespace) -> None:
    settings = with_flags(args, recipe(args.recipe).imagination)
    cfg = with_flags(args, imagination_train_config(args.run))
    fit(lambda env: ImaginationPhase(args.run, cfg, settings), cfg, args)


def fit(make_phase, cfg: TrainConfig, args: argparse.Namespace) -> dict:
    """Build the phase in this process's distributed setting, train it, print the results."""
    env = distributed.setup(args.device)
    try:
        results = Trainer(args.out, make_phase(env), cfg, env).fit(resume=args.resume)
        if env.main:
            print(f"{args.out}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        return results
    finally:
        distributed.teardown()
