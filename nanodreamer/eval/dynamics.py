"""Dynamics evaluation: open-loop rollouts on held-out episodes.

After C real context frames the world model imagines H frames from the recorded actions; per
horizon h: PSNR of the imagined frame, of the copy-last-frame baseline, of the tokenizer's own
reconstruction (the ceiling of any rollout through it), with shuffled actions; generation
frames/s with and without the key/value cache. Against the real env replayed under M other
action sequences (`eval.replay`): `counterfactual_psnr_h{h}` (the model under them),
`ignore_actions_psnr_h{h}` (the model under the recorded actions: what ignoring actions
scores) and their difference `controllability_h{h}` (dB: clearly > 0 when actions are followed).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from nanodreamer.data import EpisodeStore
from nanodreamer.data.sampler import spread_windows
from nanodreamer.eval.metrics import psnr, seeded
from nanodreamer.eval.pictures import save_video, side_by_side
from nanodreamer.eval.replay import HORIZONS, NotReplayable, branches_after_contexts, context_batch
from nanodreamer.tokenizer import frames_from_uint8
from nanodreamer.world import WorldModel

# The rollouts scored per horizon, as prefixes of `psnr_h{h}` (the module doc), and their names
KINDS = ("", "baseline_", "ceiling_", "shuffled_", "counterfactual_", "ignore_actions_")
NAMES = ("model", "copy last", "tokenizer ceiling", "shuffled actions", "counterfactual",
         "ignore actions")  # fmt: skip


def psnr_table(results: dict) -> str:
    """The rollout PSNR of every kind at every horizon, as a Markdown table."""
    rows = [["h", *NAMES], ["---"] * 7]
    for h in HORIZONS:
        rows.append([f"h{h}"] + [f"{results.get(f'{k}psnr_h{h}', math.nan):.2f}" for k in KINDS])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def rollout_windows(data: str | Path, length: int, count: int, split: str = "val") -> dict:
    """Up to `count` windows (`spread_windows`) of `length` frames: obs uint8, action,
    is_first, has_action."""
    store, windows = EpisodeStore(data), []
    for index, start in spread_windows(store, length, count, split)[:count]:
        ep = store.load(index, ("obs", "action", "is_first"))
        ep["has_action"] = ~ep["is_first"] & store.labelled[index]
        windows.append({k: torch.from_numpy(v[start : start + length]) for k, v in ep.items()})
    if not windows:
        raise ValueError(f"{data}: no {split} episode has {length} frames")
    return {k: torch.stack([w[k] for w in windows]) for k in windows[0]}


@torch.no_grad()
def rollout_psnr(world: WorldModel, frames, actions, has_action, context: int):
    """Frames (B,H,C,H,W) imagined after `context` real ones following `actions`, and their
    PSNR (B,H) -> (PSNR, frames)."""
    world.reset(frames[:, :context], actions[:, :context], has_action[:, :context])
    imagined = torch.stack([world.step(actions[:, t]) for t in range(context, frames.shape[1])], 1)
    return psnr(imagined, frames[:, context:]), imagined


@torch.no_grad()
def generation_fps(world: WorldModel, frames: int = 8) -> float:
    """Interactive frames/s of step() for one rollout, decode included."""
    c, t = world.dynamics.config, world.tokenizer.config
    world.reset(
        torch.zeros(1, 0, t.channels, t.image_size, t.image_size), torch.zeros(1, 0, c.action_dim)
    )
    world.step(torch.zeros(1, c.action_dim))  # warm-up
    if world.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(frames):
        world.step(torch.zeros(1, c.action_dim))
    if world.device.type == "cuda":
        torch.cuda.synchronize()
    return frames / (time.perf_counter() - start)


def per_horizon(scores: np.ndarray, alive: np.ndarray, name: str) -> dict[str, float]:
    """Mean of scores (..., H) over the steps that happened, at each of HORIZONS."""
    return {
        f"{name}_h{h}": float(scores[..., h - 1][alive[..., h - 1]].mean())
        for h in HORIZONS
        if h <= scores.shape[-1] and alive[..., h - 1].any()
    }


@torch.no_grad()
@seeded(0)
def counterfactual_dynamics(world, data, *, contexts=32, randoms=2, context=None, split="val"):
    """Counterfactual PSNR, ignore-actions PSNR and controllability per horizon (module doc)."""
    store, horizon = EpisodeStore(data), max(HORIZONS)
    context, a = context or min(8, world.window - 1), world.dynamics.config.action_dim
    picked, alternatives, real = branches_after_contexts(
        store, contexts, context, a, randoms, split
    )
    batch = context_batch(store, picked, horizon)
    n, m, device = len(picked), len(alternatives), world.device
    frames = frames_from_uint8(batch["obs"].to(device))
    has_action = ~batch["is_first"].to(device)

    def imagine(rows, actions):  # -> (rows, H, C, H, W)
        world.reset(frames[rows], batch["action"][rows].to(device), has_action[rows])
        return torch.stack([world.step(actions[:, t].to(device)) for t in range(horizon)], 1)

    every = torch.arange(n).repeat_interleave(m)  # (N*M,): context of each branch
    follow = imagine(every, torch.from_numpy(alternatives).repeat(n, 1, 1))
    follow = follow.unflatten(0, (n, m))
    recorded = imagine(torch.arange(n), batch["future"])[:, None]  # (N,1,H,...)
    truth = frames_from_uint8(torch.from_numpy(real["frames"]).to(device))
    scores = psnr(follow, truth).cpu().numpy()
    ignore = psnr(recorded.expand_as(truth), truth).cpu().numpy()
    results = per_horizon(scores, real["alive"], "counterfactual_psnr")
    results |= per_horizon(ignore, real["alive"], "ignore_actions_psnr")
    for h in HORIZONS:
        if f"counterfactual_psnr_h{h}" in results:
            gap = results[f"counterfactual_psnr_h{h}"] - results[f"ignore_actions_psnr_h{h}"]
            results[f"controllability_h{h}"] = gap
    return results | {"counterfactual_contexts": n, "counterfactual_actions": m}


@seeded(0)
def evaluate_dynamics(world: WorldModel, data, *, context=None, windows=16, gif=None, quick=False,
                      split="val") -> dict[str, float]:  # fmt: skip
    """The module doc's figures on the split's episodes ("all" for a held-out dataset);
    `quick` skips the shuffled, counterfactual and no-cache runs."""
    horizon = max(HORIZONS)
    context = context or min(8, world.window - 1)
    batch = rollout_windows(data, context + horizon, windows, split)
    device = world.device
    frames = frames_from_uint8(batch["obs"].to(device))
    actions = batch["action"].to(device)
    has_action = batch["has_action"].to(device)
    scores, imagined = rollout_psnr(world, frames, actions, has_action, context)
    truth = frames[:, context:]
    baseline = psnr(frames[:, context - 1 : context].expand_as(truth), truth)
    recon = world.tokenizer.decode(world.tokenizer.encode(frames))[:, context:]
    ceiling = psnr(recon, truth)
    kinds = dict(zip(KINDS, (scores, baseline, ceiling), strict=False))
    if not quick and frames.shape[0] > 1:
        shuffled = actions.roll(1, dims=0)  # another episode's actions, same context frames
        shuffled[:, :context] = actions[:, :context]
        kinds["shuffled_"] = rollout_psnr(world, frames, shuffled, has_action, context)[0]
    results = {
        f"{k}psnr_h{h}": v[:, h - 1].mean().item() for k, v in kinds.items() for h in HORIZONS
    }
    if not quick:
        try:
            results |= counterfactual_dynamics(world, data, split=split)
        except NotReplayable as err:
            results["counterfactual"] = f"skipped: {err}"
    results["fps"] = generation_fps(world)
    if not quick:
        uncached = WorldModel(world.tokenizer, world.dynamics, steps=world.steps, use_cache=False)
        results["fps_no_cache"] = generation_fps(uncached)
    results["context"], results["windows"] = context, frames.shape[0]
    if gif is not None:
        shown = slice(0, 4)
        real = frames[shown]
        fake = torch.cat([frames[shown, :context], imagined[shown]], 1)
        save_video(gif, side_by_side(real, fake), fps=8)
    return results
