"""Pictures people look at: side-by-side GIF/MP4 strips and loss plots."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line]
    keys = tuple(k for k in keys if any(k in r for r in rows))
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return out
