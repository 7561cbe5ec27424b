"""Tokenizer evaluation: reconstruction PSNR/SSIM on held-out episodes (mask p = 0), and a GIF
of ground truth beside reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nanodreamer.data import EpisodeStore
from nanodreamer.data.sampler import spread_windows
from nanodreamer.eval.metrics import psnr, ssim
from nanodreamer.eval.pictures import save_video, side_by_side
from nanodreamer.tokenizer import Tokenizer, frames_from_uint8


def validation_windows(
    data: str | Path, seq_len: int, count: int = 16, split="val"
) -> torch.Tensor:
    """Up to `count` windows (N, T, H, W, C) uint8 of the split's episodes (`spread_windows`)."""
    store = EpisodeStore(data)
    picked = spread_windows(store, seq_len, count, split)[:count]
    if not picked:
        raise ValueError(f"{data}: no {split} episode has {seq_len} frames")
    windows = [store.load(i, ("obs",))["obs"][start : start + seq_len] for i, start in picked]
    return torch.from_numpy(np.stack(windows))


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
