"""Metrics: image quality on frames in [0, 1] shaped (..., C, H, W), one value per frame;
means with 95% intervals; correlation; `seeded` evaluation."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Torch's random draws inside depend only on `seed` (the same figures whatever ran
    before); the caller's random state is restored afterwards. Also a decorator."""
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(seed)
        yield


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a.float() - b.float()).pow(2).mean((-3, -2, -1))
    return -10 * torch.log10(mse.clamp(min=1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with a Gaussian window, averaged over channels."""
    lead, (c, h, w) = a.shape[:-3], a.shape[-3:]
    x, y = a.reshape(-1, c, h, w).float(), b.reshape(-1, c, h, w).float()
    coords = torch.arange(window, device=x.device, dtype=torch.float32) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum())[None, None]
    kernel = (g.transpose(-1, -2) @ g).expand(c, 1, window, window)
    blur = lambda z: F.conv2d(z, kernel, groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean((-3, -2, -1)).reshape(lead)


# Student's t quantile t_{0.975, df} for df = 1..30; beyond, the Cornish-Fisher expansion.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def mean_interval(values) -> dict[str, float]:
    """Mean, sample standard deviation and the half-width of the 95% t-interval of the mean."""
    x = np.asarray(values, np.float64).ravel()
    n, z = len(x), 1.959964
    if n < 2:
        return {"mean": float(x.mean()), "std": 0.0, "ci95": float("inf")}
    std = float(x.std(ddof=1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else z + (z**3 + z) / (4 * (n - 1))
    return {"mean": float(x.mean()), "std": std, "ci95": t * std / np.sqrt(n)}


def correlation(a, b) -> float:
    """Pearson correlation of two equally long sequences; nan when either is constant."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
