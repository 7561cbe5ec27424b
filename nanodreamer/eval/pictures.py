"""Pictures people look at: side-by-side GIF/MP4 strips and loss plots."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from matplotlib.figure import Figure  # the object API: no pyplot, no display backend

from nanodreamer.io import atomic_write


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(..., C, H, W) float in [0,1] -> (..., H, W, C) uint8."""
    return (frames.detach().float().clamp(0, 1) * 255).round().byte().movedim(-3, -1).cpu().numpy()


def side_by_side(*videos: torch.Tensor, gap: int = 2) -> np.ndarray:
    """Videos (B, T, C, H, W) -> one grid (T, B*H, n*W, 3) uint8: a row per sample, a column
    per video (e.g. ground truth | reconstruction)."""
    columns = [to_uint8(v) for v in videos]  # each (B,T,H,W,C)
    b, t, h, w, c = columns[0].shape
    grid = np.full((t, b * (h + gap), len(columns) * (w + gap), c), 255, np.uint8)
    for j, video in enumerate(columns):
        for i in range(b):
            grid[:, i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = video[i]
    return grid


def save_video(path: str | Path, frames: np.ndarray, fps: int = 10, scale: int = 2) -> Path:
    """Write (T, H, W, C) uint8 frames as .gif or .mp4 (by suffix), upscaled `scale` times."""
    path = Path(path)
    if scale > 1:
        frames = frames.repeat(scale, 1).repeat(scale, 2)
    if frames.shape[-1] == 1:
        frames = frames.repeat(3, -1)
    suffix = path.suffix.lower()

    def write(tmp: Path) -> None:
        if suffix == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000 / fps, loop=0)
        else:
            iio.imwrite(tmp, frames, extension=suffix, fps=fps, codec="libx264", macro_block_size=1)

    atomic_write(path, write)
    return path


def plot_metrics(metrics_file: str | Path, out: str | Path, keys: tuple[str, ...]) -> Path | None:
    """Plot `keys` of a metrics JSONL file against step, one panel per key, as a PNG."""
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line]
    keys = tuple(k for k in keys if any(k in r for r in rows))
    if not keys:
        return None
    fig = Figure(figsize=(4 * len(keys), 3))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None)
        ax.set(title=key, xlabel="step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_learning_curve(results: list[dict], out: str | Path) -> Path:
    """Real-env return per round (mean and 95% interval) of `rounds.json`'s rounds: the
    imagination policy, behaviour cloning and random."""
    rounds = [r["round"] for r in results]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    lines = {"": "imagination policy", "bc_best_": "behaviour cloning (best)", "random_": "random"}
    for prefix, label in lines.items():
        means = [r["real_env"][f"{prefix}return_mean"] for r in results]
        errors = [r["real_env"][f"{prefix}return_ci95"] or 0 for r in results]
        ax.errorbar(rounds, means, yerr=errors, marker="o", capsize=3, label=label)
    ax.set(xlabel="round", ylabel="return (full episodes)", xticks=rounds)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def save_figure(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    return out
