"""Image quality metrics on frames in [0, 1], shaped (..., C, H, W), one value per frame."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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

    def blur(z):
        return F.conv2d(z, kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean((-3, -2, -1)).reshape(lead)
