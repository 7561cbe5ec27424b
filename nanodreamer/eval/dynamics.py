"""Dynamics evaluation: open-loop rollouts on held-out episodes.

After C real context frames the world model imagines H frames from the recorded actions.
Reported per horizon h: PSNR of the imagined frame, of the copy-last-frame baseline, and of the
tokenizer's own reconstruction of the true frame (the ceiling any rollout through this
tokenizer can reach); rollouts with shuffled actions show whether actions matter; generation
frames/s with and without the key/value cache.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from nanodreamer.data import EpisodeStore, split_episodes
from nanodreamer.eval.control import HORIZONS, NotReplayable, counterfactual_dynamics
from nanodreamer.eval.metrics import psnr, seeded
from nanodreamer.eval.pictures import save_video, side_by_side
from nanodreamer.eval.tokenizer import settle_frames
from nanodreamer.tokenizer import frames_from_uint8
from nanodreamer.world import WorldModel


def rollout_windows(data: str | Path, length: int, count: int, split: str = "val") -> dict:
    """Up to `count` windows of `length` frames (obs uint8, action, is_first, has_action) from
    the split's episodes, evenly spread after the settle frames. Deterministic."""
    store = EpisodeStore(data)
    skip = settle_frames(store)
    episodes = split_episodes(store, split) or split_episodes(store, "all")
    per_episode = max(1, -(-count // len(episodes)))
    windows = []
    for index in episodes:
        ep = store.load(index, ("obs", "action", "is_first"))
        ep["has_action"] = ~ep["is_first"] & store.labelled[index]
        n = len(ep["obs"])
        if n < length:
            continue
        first = skip if n >= skip + length else 0
        for start in torch.linspace(first, n - length, per_episode).round().long().tolist():
            windows.append({k: torch.from_numpy(v[start : start + length]) for k, v in ep.items()})
    if not windows:
        raise ValueError(f"{data}: no {split} episode has {length} frames")
    windows = windows[:count]
    return {k: torch.stack([w[k] for w in windows]) for k in windows[0]}


@torch.no_grad()
def rollout_psnr(world: WorldModel, frames, actions, has_action, context: int) -> torch.Tensor:
    """PSNR (B, H) of frames imagined after `context` real ones, following `actions`."""
    world.reset(frames[:, :context], actions[:, :context], has_action[:, :context])
    imagined = [world.step(actions[:, t]) for t in range(context, frames.shape[1])]
    return psnr(torch.stack(imagined, 1), frames[:, context:]), torch.stack(imagined, 1)


@torch.no_grad()
def generation_fps(world: WorldModel, frames: int = 8) -> float:
    """Interactive frames/s of step() for one rollout, decode included."""
    c = world.dynamics.config
    world.reset(
        torch.zeros(
            1, 0, world.tokenizer.config.channels, *[world.tokenizer.config.image_size] * 2
        ),
        torch.zeros(1, 0, c.action_dim),
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


@seeded(0)
def evaluate_dynamics(
    world: WorldModel,
    data: str | Path,
    *,
    context: int | None = None,
    windows: int = 16,
    gif: str | Path | None = None,
    quick: bool = False,
    split: str = "val",
) -> dict[str, float]:
    """Rollout metrics on the split's episodes ("all" for a held-out dataset; keys psnr_h1..,
    baseline_psnr_h.., ceiling_.., shuffled_psnr_h.., fps, fps_no_cache, and the
    counterfactual ones of `eval.control`). `quick` skips the shuffled, counterfactual and
    no-cache runs."""
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
    results = {}
    for h in HORIZONS:
        results[f"psnr_h{h}"] = scores[:, h - 1].mean().item()
        results[f"baseline_psnr_h{h}"] = baseline[:, h - 1].mean().item()
        results[f"ceiling_psnr_h{h}"] = ceiling[:, h - 1].mean().item()
    if not quick and frames.shape[0] > 1:
        shuffled = actions.roll(1, dims=0)  # another episode's actions, same context frames
        shuffled[:, :context] = actions[:, :context]
        wrong, _ = rollout_psnr(world, frames, shuffled, has_action, context)
        for h in HORIZONS:
            results[f"shuffled_psnr_h{h}"] = wrong[:, h - 1].mean().item()
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
