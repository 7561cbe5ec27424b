"""What each `nanodreamer` subcommand does; `cli.py` holds the parser that calls these."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from nanodreamer.errors import UserError
from nanodreamer.io import to_json
from nanodreamer.pretrained import pack, pretrained
from nanodreamer.train import distributed
from nanodreamer.train.trainer import TrainConfig, Trainer


def cmd_collect(args: argparse.Namespace) -> None:
    from nanodreamer.data import EpisodeStore, collect, summarize

    options = {"action_repeat": args.action_repeat}
    if args.resolution is not None:
        options["resolution"] = args.resolution
    if args.max_episode_steps is not None:
        options["max_episode_steps"] = args.max_episode_steps
    if args.max_gas is not None:
        if args.env != "car-racing":
            raise UserError("--max-gas is for --env car-racing only")
        options["max_gas"] = args.max_gas
    if args.num_cars is not None:
        if args.env != "multi-car-racing":
            raise UserError("--num-cars is for --env multi-car-racing only")
        options["num_cars"] = args.num_cars
    policy = None
    if args.policy:
        from nanodreamer.eval.agent import AgentPolicy

        cars = args.num_cars or 1  # one policy context per car stream
        races = -(-args.episodes // cars)
        policy = AgentPolicy(args.policy, num_envs=min(args.workers, races) * cars)
    store = collect(
        args.env,
        args.out,
        args.episodes,
        workers=args.workers,
        seed=args.seed,
        env_options=options,
        policy=policy,
        frames=args.frames,
    )
    info = summarize(store)
    print(f"{args.out}: {info['episodes']} episodes, {info['frames']} frames")
    if args.frames:
        print(f"{args.frames}: {summarize(EpisodeStore(args.frames))['frames']} frames")


def cmd_data_info(args: argparse.Namespace) -> None:
    from nanodreamer.data import EpisodeStore, summarize

    info = summarize(EpisodeStore(args.dir))
    if args.json:
        print(json.dumps(info, indent=1))
        return
    print(format_summary(info))


def cmd_import_video(args: argparse.Namespace) -> None:
    from nanodreamer.data import EpisodeStore
    from nanodreamer.data.video import import_videos

    added, errors = import_videos(args.paths, args.out, args.resolution)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    frames = sum(EpisodeStore(args.out).lengths[added]) if added else 0
    print(f"{args.out}: {len(added)} action-free episodes ({frames} frames) imported")
    if errors:
        sys.exit(1)


def cmd_import_minari(args: argparse.Namespace) -> None:
    from nanodreamer.data.minari_io import import_minari

    store = import_minari(args.dataset, args.out)
    print(f"{args.out}: {len(store)} episodes ({store.frames} frames) from {args.dataset}")


def cmd_export_minari(args: argparse.Namespace) -> None:
    from nanodreamer.data.minari_io import export_minari

    dataset = export_minari(args.dir, args.dataset_id)
    print(
        f"{args.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps "
        f"(minari.load_dataset({args.dataset_id!r}))"
    )


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
            f"episodes     {info['episodes']} ({info['terminated_episodes']} terminated, "
            f"{info['episodes'] - info['labelled_episodes']} action-free)",
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


def train_config(args: argparse.Namespace, preset) -> TrainConfig:
    """The preset's training defaults, overridden by the flags the user gave."""
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "minutes": args.minutes,
        "seed": args.seed,
        "workers": args.workers,
        "eval_every": args.eval_every,
        "compile": args.compile or None,
        "checkpointing": args.checkpointing,
        "memory_budget": args.memory_budget,
        "ema": args.ema,
        "tensorboard": False if args.no_tensorboard else None,
        "wandb": args.wandb or None,
    }
    return replace(preset, **{k: v for k, v in overrides.items() if v is not None})


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from nanodreamer.tokenizer import TOKENIZER_PRESETS, load_perceptual
    from nanodreamer.train.tokenizer import TRAIN_PRESETS, TokenizerPhase, tokenizer_config_for

    cfg = train_config(args, TRAIN_PRESETS[args.preset])
    preset = TOKENIZER_PRESETS[args.preset]
    config = tokenizer_config_for(args.data, preset, cfg.seq_len, args.patch)
    for flag, value in (("--latents", args.latents), ("--latent-dim", args.latent_dim)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    n, width = args.latents or config.n_latents, args.latent_dim or config.latent_dim
    config = replace(config, n_latents=n, latent_dim=width)

    def phase(env):
        tokenizer_phase = TokenizerPhase(args.data, config, cfg)
        if args.lpips:
            perceptual = load_perceptual(args.lpips).to(env.device)
            tokenizer_phase.model.use_perceptual(perceptual)
        return tokenizer_phase

    _fit(phase, cfg, args)


def cmd_eval_tokenizer(args: argparse.Namespace) -> None:
    from nanodreamer.eval.tokenizer import evaluate_tokenizer, validation_windows
    from nanodreamer.train.checkpoint import read_run
    from nanodreamer.train.tokenizer import check_dataset_matches, load_tokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_tokenizer(args.run, device)
    check_dataset_matches(Path(args.data), model.config)
    seq_len = read_run(args.run)["train"]["seq_len"]
    windows = validation_windows(args.data, seq_len, count=args.windows, split=args.split)
    gif = Path(args.gif) if args.gif else Path(args.run) / "eval_reconstruction.gif"
    results = evaluate_tokenizer(model, windows, gif=gif) | {"gif": str(gif)}
    if args.json:
        print(to_json(results))
    else:
        print(
            f"PSNR {results['psnr']:.2f} dB  SSIM {results['ssim']:.4f}  "
            f"({results['frames']} validation frames)  reconstruction: {gif}"
        )


def cmd_train_dynamics(args: argparse.Namespace) -> None:
    from nanodreamer.data.latents import encode_dataset
    from nanodreamer.dynamics import DYNAMICS_PRESETS
    from nanodreamer.train.dynamics import TRAIN_PRESETS, DynamicsPhase, dynamics_config_for

    cfg = train_config(args, TRAIN_PRESETS[args.preset])
    if args.long_seq_len is not None:
        cfg = replace(cfg, long_seq_len=args.long_seq_len)
    if args.labelled_frac is not None:
        cfg = replace(cfg, labelled_frac=args.labelled_frac)

    def phase(env):
        if env.main:  # encode once, before the other ranks read the cache
            encode_dataset(args.data, args.tokenizer, env.device)
        env.barrier()
        latents = encode_dataset(args.data, args.tokenizer, env.device)
        config = replace(
            dynamics_config_for(latents, DYNAMICS_PRESETS[args.preset], args.action_bins),
            window=cfg.seq_len,
        )
        fractions = ("independent_frac", "context_frac", "rollout_frac")
        config = replace(
            config, **{k: getattr(args, k) for k in fractions if getattr(args, k) is not None}
        )
        switches = {k: True for k in ("residual", "action_in_latents") if getattr(args, k)}
        config = replace(config, **switches)
        return DynamicsPhase(args.data, args.tokenizer, config, cfg)

    _fit(phase, cfg, args)


def cmd_eval_dynamics(args: argparse.Namespace) -> None:
    from nanodreamer.eval.dynamics import evaluate_dynamics
    from nanodreamer.train.dynamics import load_world_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    world = load_world_model(args.run, device, steps=args.steps)
    gif = Path(args.gif) if args.gif else Path(args.run) / "eval_imagination.gif"
    results = evaluate_dynamics(
        world, args.data, context=args.context, windows=args.windows, gif=gif, split=args.split
    ) | {"gif": str(gif)}
    if args.json:
        print(to_json(results))
        return
    print(f"rollout PSNR after {results['context']} context frames ({results['windows']} windows)")
    print("horizon   model  copy-last  tokenizer  shuffled  counterfactual  ignore-actions")
    for h in (1, 4, 8, 16):
        row = [results.get(f"{kind}psnr_h{h}", float("nan")) for kind in KINDS]
        print(f"h{h:<8}{row[0]:6.2f}  {row[1]:9.2f}  {row[2]:9.2f}  {row[3]:8.2f}  "
              f"{row[4]:14.2f}  {row[5]:14.2f}")  # fmt: skip
    if "controllability_h8" in results:
        print(
            f"controllability at h8: {results['controllability_h8']:+.2f} dB (counterfactual "
            "minus ignore-actions PSNR: > 0 when the model follows actions)"
        )
    else:
        print(f"counterfactual: {results.get('counterfactual', 'not run')}")
    print(
        f"generation {results['fps']:.1f} frames/s with cache, "
        f"{results.get('fps_no_cache', float('nan')):.1f} without; imagination: {gif}"
    )


KINDS = ("", "baseline_", "ceiling_", "shuffled_", "counterfactual_", "ignore_actions_")


def cmd_imagine(args: argparse.Namespace) -> None:
    from nanodreamer.eval.dynamics import rollout_windows
    from nanodreamer.eval.pictures import save_video, side_by_side
    from nanodreamer.tokenizer import frames_from_uint8
    from nanodreamer.train.dynamics import load_world_model

    if Path(args.out).suffix.lower() not in (".gif", ".mp4"):
        raise UserError(f"--out must end in .gif or .mp4, got {args.out}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device).manual_seed(args.seed)
    world = load_world_model(args.run, device, steps=args.steps, generator=generator)
    context = args.context or min(8, world.window - 1)
    batch = rollout_windows(args.data, context + args.frames, args.samples)
    frames = frames_from_uint8(batch["obs"].to(device))
    actions = batch["action"].to(device)
    if args.actions == "random":
        actions[:, context:].uniform_(-1, 1, generator=generator)
    world.reset(
        frames[:, :context], actions[:, :context], batch["has_action"][:, :context].to(device)
    )
    imagined = torch.stack([world.step(actions[:, t]) for t in range(context, frames.shape[1])], 1)
    fake = torch.cat([frames[:, :context], imagined], 1)
    path = save_video(args.out, side_by_side(frames, fake), fps=args.fps)
    print(
        f"{path}: {frames.shape[0]} rollouts, {context} real context frames then "
        f"{args.frames} imagined ({args.actions} actions); left: real, right: imagined"
    )


def cmd_train_agent(args: argparse.Namespace) -> None:
    from nanodreamer.train.agent import AgentPhase, agent_train_config

    cfg = train_config(args, agent_train_config(args.world_model))
    phase = lambda env: AgentPhase(  # noqa: E731
        args.data, args.world_model, cfg, value_gamma=args.value_gamma
    )
    _fit(phase, cfg, args)


def cmd_train_imagination(args: argparse.Namespace) -> None:
    from nanodreamer.train.agent import ImaginationPhase, imagination_train_config

    cfg = train_config(args, imagination_train_config(args.run))
    _fit(
        lambda env: ImaginationPhase(
            args.run,
            cfg,
            horizon=args.horizon,
            gamma=args.gamma,
            beta=args.beta,
            steps=args.sampling_steps,
            value_warmup=args.value_warmup,
            prior=args.prior,
        ),
        cfg,
        args,
    )


def _fit(make_phase, cfg: TrainConfig, args: argparse.Namespace) -> dict:
    """Build the phase in this process's distributed setting, train it, print the results."""
    env = distributed.setup(args.device)
    try:
        results = Trainer(args.out, make_phase(env), cfg, env).fit(resume=args.resume)
        if env.main:
            print(f"{args.out}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        return results
    finally:
        distributed.teardown()


def cmd_eval_agent(args: argparse.Namespace) -> None:
    from nanodreamer.eval.agent import evaluate_agent
    from nanodreamer.eval.control import control_figures

    run = args.run or str(pretrained(args.pretrained) / "agent")
    results = evaluate_agent(
        run,
        args.env,
        args.episodes,
        seed=args.seed,
        video=args.video,
        mode=args.mode,
        max_episode_steps=args.max_episode_steps,
        num_cars=args.num_cars,
        opponents=args.opponents,
    )
    results |= control_figures(run)
    if args.json:
        print(to_json(results))
        return
    print(format_agent_results(results, args.env))


def format_agent_results(r: dict, env: str) -> str:
    """The lines `eval agent` prints: returns with 95% intervals, then the world model's
    reward and imagination figures."""
    lines = [
        f"{r['episodes']} full episodes of {env} on fresh seeds, mean ± 95% interval: agent "
        f"{r['return_mean']:.1f} ± {r['return_ci95']:.1f} (std {r['return_std']:.1f}), random "
        f"{r['random_return_mean']:.1f} ± {r['random_return_ci95']:.1f}"
    ]
    if "reward_corr" in r:
        lines += [
            f"reward model on held-out episodes: MAE {r['reward_mae']:.3f}, correlation "
            f"{r['reward_corr']:.2f}; under other actions: correlation "
            f"{r['counterfactual_reward_corr']:.2f}, ranking their 16-step returns from one "
            f"state: {r['counterfactual_return_corr_within']:.2f}",
            f"policy from the same states, 16 steps: imagined return {r['imagined_return']:.2f}, "
            f"real {r['real_return_h16']:.2f}, correlation {r['imagined_real_corr']:.2f}",
        ]
    else:
        lines.append(f"world-model figures: {r.get('control', 'not run')}")
    return "\n".join(lines)


def cmd_rounds(args: argparse.Namespace) -> None:
    from nanodreamer.pipeline import RoundsConfig, run_rounds

    recipe = RoundsConfig()
    given = {k: v for k, v in vars(args).items() if v is not None}  # cli.ROUNDS_FLAGS: places
    top = {k: v for k, v in given.items() if k in {f.name for f in fields(recipe)}}
    env = top.get("env", recipe.env)
    if "env_options.max_gas" in given and env != "car-racing":
        raise UserError("--max-gas is for --env car-racing only")
    nested = {"env_options": recipe.options_for(env), "imagination": recipe.imagination}
    nested["dynamics"] = recipe.dynamics
    for place, value in given.items():
        field, _, key = place.partition(".")
        if key:
            nested[field] = nested[field] | {key: value}
    config = replace(recipe, **top, **nested)

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
    from nanodreamer.demo import run_demo

    run_demo(args.out, minutes=args.minutes, env=args.env, episodes=args.episodes)


def cmd_play(args: argparse.Namespace) -> None:
    from nanodreamer.play import PlayConfig, serve

    loopback = ("127.0.0.1", "localhost", "::1")
    if args.host not in loopback and not args.public:
        raise UserError(
            f"--host {args.host} would let other machines drive the model: add --public to "
            "mean it, or keep the default 127.0.0.1"
        )
    config = {k: getattr(args, k) for k in ("run", "data", "agent", "host", "port", "fps")}
    config |= {"max_sessions": args.max_sessions, "steps": args.steps, "device": args.device}
    if args.pretrained:  # its world model and agent are one run; its episodes give start frames
        folder = pretrained(args.pretrained)
        config |= {"run": str(folder / "agent"), "agent": config["agent"] or str(folder / "agent")}
        config["data"] = config["data"] or str(folder / "data")
    serve(PlayConfig(**config, context=args.context))


def cmd_pack(args: argparse.Namespace) -> None:
    out = pack(args.run, args.out, args.episodes)
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors")) / 2**20
    print(f"{out}: {size:.1f} MB of weights; use it with --run {out / 'agent'}")
