"""Distributions for the agent's heads: symlog/symexp and the two-hot categorical over
symlog-spaced bins (DreamerV3), used for rewards and values."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot:
    """Scalars as a categorical over `bins` points evenly spaced in symlog space on
    [-limit, limit]. A value puts weight on its two neighbouring bins so that the weighted
    mean of the bins equals its symlog exactly; decoding takes the expected symlog under the
    predicted distribution and maps it back with symexp."""

    def __init__(self, bins: int = 63, limit: float = 10.0):
        self.points = torch.linspace(-limit, limit, bins)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (...) -> target probabilities (..., bins)."""
        points = self.points.to(x.device)
        y = symlog(x.float()).clamp(points[0], points[-1])
        upper = torch.searchsorted(points, y.contiguous(), right=False).clamp(1, len(points) - 1)
        lower = upper - 1
        w_upper = (y - points[lower]) / (points[upper] - points[lower])  # the weights sum to 1
        target = torch.zeros(*x.shape, len(points), device=x.device)
        target.scatter_(-1, lower[..., None], (1 - w_upper)[..., None])
        target.scatter_add_(-1, upper[..., None], w_upper[..., None])
        return target

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (..., bins) -> expected value (...)."""
        points = self.points.to(logits.device)
        return symexp((logits.float().softmax(-1) * points).sum(-1))

    def loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of logits (..., bins) against the two-hot encoding of x (...)."""
        return -(self.encode(x) * F.log_softmax(logits.float(), -1)).sum(-1)
