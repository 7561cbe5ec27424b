"""Tokenizer evaluation: reconstruction PSNR/SSIM on held-out episodes (mask p = 0), and a GIF
of ground truth beside reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nanodreamer.data import EpisodeStore, split_episodes
from nanodreamer.eval.metrics import psnr, ssim
from nanodreamer.eval.pictures import save_video, side_by_side
from nanodreamer.tokenizer import Tokenizer, frames_from_uint8

# Env frames at the start of an episode that are not gameplay (car racing zooms in for ~50).
SETTLE_FRAMES = {"car-racing": 50}


def settle_frames(store: EpisodeStore) -> int:
    """Stored frames to skip at an episode's start: `SETTLE_FRAMES` at the data's action repeat."""
    repeat = store.manifest["env_options"].get("action_repeat", 1)
    return -(-SETTLE_FRAMES.get(store.manifest["env"], 0) // repeat)


def validation_windows(
    data: str | Path, seq_len: int, count: int = 16, skip: int | None = None, split: str = "val"
) -> torch.Tensor:
    """Up to `count` windows (N, T, H, W, C) uint8, spread evenly over the split's episodes,
    starting after the first `skip` frames when the episode is long enough. Deterministic."""
    store = EpisodeStore(data)
    if skip is None:
        skip = settle_frames(store)
    episodes = split_episodes(store, split) or split_episodes(store, "all")
    per_episode = max(1, -(-count // len(episodes)))
    windows = []
    for index in episodes:
        obs = store.load(index, ("obs",))["obs"]
        if len(obs) < seq_len:
            continue
        first = skip if len(obs) >= skip + seq_len else 0
        for start in np.linspace(first, len(obs) - seq_len, per_episode).round().astype(int):
            windows.append(obs[start : start + seq_len])
    if not windows:
        raise ValueError(f"{data}: no {split} episode has {seq_len} frames")
    return torch.from_numpy(np.stack(windows[:count]))


@torch.no_grad()
def evaluate_tokenizer(model: Tokenizer, windows: torch.Tensor, *, batch_size=8, gif=None) -> dict:
    """PSNR and SSIM (means over frames) of decode(encode(x)) on uint8 windows (N,T,H,W,C)."""
    model.eval()
    device = next(model.parameters()).device
    scores, shown = {"psnr": [], "ssim": []}, None
    for chunk in windows.split(batch_size):
        frames = frames_from_uint8(chunk.to(device))
        recon = model.decode(model.encode(frames))
        scores["psnr"].append(psnr(recon, frames).flatten())
        scores["ssim"].append(ssim(recon, frames).flatten())
        if shown is None:
            shown = (frames[:4], recon[:4])
    if gif is not None:
        save_video(gif, side_by_side(*shown), fps=10)
    results = {k: torch.cat(v).mean().item() for k, v in scores.items()}
    return results | {"frames": windows.shape[0] * windows.shape[1]}
