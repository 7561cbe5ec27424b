"""Evaluation subcommands: `eval tokenizer | dynamics | agent` and `imagine` (how to read each
figure: docs/evaluation.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nanodreamer.cli.flags import add_run_or_pretrained, add_split_flag, command, group
from nanodreamer.data.latents import check_dataset_matches
from nanodreamer.errors import UserError
from nanodreamer.eval.agent import evaluate_agent
from nanodreamer.eval.control import control_figures
from nanodreamer.eval.dynamics import evaluate_dynamics, psnr_table, rollout_psnr, rollout_windows
from nanodreamer.eval.pictures import save_video, side_by_side
from nanodreamer.eval.tokenizer import evaluate_tokenizer, validation_windows
from nanodreamer.io import to_json
from nanodreamer.pretrained import pretrained
from nanodreamer.runs import load_tokenizer, load_world_model, read_run
from nanodreamer.tokenizer import frames_from_uint8


def add_commands(sub) -> None:
    evaluate = group(sub, "eval", "evaluate a trained run")
    p = command(evaluate, "tokenizer", cmd_eval_tokenizer, "reconstruction PSNR and SSIM, held out")
    add_run_flags(p, windows=32, gif="reconstruction")

    p = command(evaluate, "dynamics", cmd_eval_dynamics, "rollout PSNR, baselines, frames/s")
    add_run_flags(p, windows=16, gif="imagination")
    p.add_argument("--context", type=int, help="real context frames (default min(8, window-1))")
    p.add_argument("--steps", type=int, default=4, help="sampling steps K per frame")

    p = command(evaluate, "agent", cmd_eval_agent, "real-env return beside random")
    add_run_or_pretrained(p, "agent or imagination run folder")
    p.add_argument("--env", required=True)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    acting = p.add_mutually_exclusive_group()  # neither: as the run records (pack), else sample
    acting.add_argument("--mode", action="store_true", default=None, help="most likely actions")
    sampled = "sampled actions (default, unless the run records a choice)"
    acting.add_argument("--sample", dest="mode", action="store_false", default=None, help=sampled)
    p.add_argument("--max-episode-steps", type=int, help="cap episodes (default: the env's limit)")
    p.add_argument("--video", help="write the first episode as .gif or .mp4")
    p.add_argument("--num-cars", type=int, help="multi-car-racing: cars per race")
    rivals = "multi-car-racing: the policy drives every car, or car 0 against random cars"
    p.add_argument("--opponents", choices=("self", "random"), default="self", help=rivals)
    p.add_argument("--json", action="store_true")

    p = command(sub, "imagine", cmd_imagine, "real context, imagined frames beside truth")
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


def add_run_flags(p: argparse.ArgumentParser, windows: int, gif: str) -> None:
    """A run scored on a dataset's held-out windows, with a GIF and a JSON option."""
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--windows", type=int, default=windows, help="validation windows to score")
    add_split_flag(p)
    p.add_argument("--gif", help=f"default RUN/eval_{gif}.gif (training writes RUN/{gif}.gif)")
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")


def device_of(args: argparse.Namespace) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def cmd_eval_tokenizer(args: argparse.Namespace) -> None:
    model = load_tokenizer(args.run, device_of(args))
    check_dataset_matches(Path(args.data), model.config)
    seq_len = read_run(args.run)["train"]["seq_len"]
    windows = validation_windows(args.data, seq_len, count=args.windows, split=args.split)
    gif = Path(args.gif) if args.gif else Path(args.run) / "eval_reconstruction.gif"
    results = evaluate_tokenizer(model, windows, gif=gif) | {"gif": str(gif)}
    text = f"PSNR {results['psnr']:.2f} dB  SSIM {results['ssim']:.4f}  "
    text += f"({results['frames']} validation frames)  reconstruction: {gif}"
    print(to_json(results) if args.json else text)


def cmd_eval_dynamics(args: argparse.Namespace) -> None:
    world = load_world_model(args.run, device_of(args), steps=args.steps)
    gif = Path(args.gif) if args.gif else Path(args.run) / "eval_imagination.gif"
    results = evaluate_dynamics(
        world, args.data, context=args.context, windows=args.windows, gif=gif, split=args.split
    ) | {"gif": str(gif)}
    if args.json:
        print(to_json(results))
        return
    print(f"rollout PSNR after {results['context']} context frames ({results['windows']} windows)")
    print(psnr_table(results))
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


def cmd_imagine(args: argparse.Namespace) -> None:
    if Path(args.out).suffix.lower() not in (".gif", ".mp4"):
        raise UserError(f"--out must end in .gif or .mp4, got {args.out}")
    device = device_of(args)
    generator = torch.Generator(device).manual_seed(args.seed)
    world = load_world_model(args.run, device, steps=args.steps, generator=generator)
    context = args.context or min(8, world.window - 1)
    batch = rollout_windows(args.data, context + args.frames, args.samples)
    frames = frames_from_uint8(batch["obs"].to(device))
    actions = batch["action"].to(device)
    if args.actions == "random":
        actions[:, context:].uniform_(-1, 1, generator=generator)
    _, imagined = rollout_psnr(world, frames, actions, batch["has_action"].to(device), context)
    fake = torch.cat([frames[:, :context], imagined], 1)
    path = save_video(args.out, side_by_side(frames, fake), fps=args.fps)
    print(
        f"{path}: {frames.shape[0]} rollouts, {context} real context frames then "
        f"{args.frames} imagined ({args.actions} actions); left: real, right: imagined"
    )


def cmd_eval_agent(args: argparse.Namespace) -> None:
    run = args.run or str(pretrained(args.pretrained) / "agent")
    names = ("seed", "video", "mode", "max_episode_steps", "num_cars", "opponents")
    results = evaluate_agent(run, args.env, args.episodes, **{k: getattr(args, k) for k in names})
    results |= control_figures(run)
    print(to_json(results) if args.json else format_agent_results(results, args.env))


def format_agent_results(r: dict, env: str) -> str:
    """The lines `eval agent` prints: returns with 95% intervals, then the world model's
    reward and imagination figures."""
    lines = [
        f"{r['episodes']} full episodes of {env} on fresh seeds, mean ± 95% interval: agent "
        f"{r['return_mean']:.1f} ± {r['return_ci95']:.1f} (std {r['return_std']:.1f}), random "
        f"{r['random_return_mean']:.1f} ± {r['random_return_ci95']:.1f}"
        + (f"; {r['tiles_visited_mean']:.0%} of the tiles" if "tiles_visited_mean" in r else "")
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
