"""Running RMS normalisation of loss terms (SPEC: every term divided by its running RMS)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class RunningRMS(nn.Module):
    """Divide each named loss term by an EMA estimate of its RMS (detached, in buffers so it is
    checkpointed). The first update sets the estimate, so terms start near 1."""

    def __init__(self, weights: dict[str, float], decay: float = 0.99, eps: float = 1e-8):
        super().__init__()
        self.names, self.decay, self.eps = tuple(weights), decay, eps
        self.register_buffer("weight", torch.tensor(list(weights.values())), persistent=False)
        self.register_buffer("mean_square", torch.zeros(len(weights)))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of terms / RMS; updates the estimates when training."""
        values = torch.stack([terms[n] for n in self.names])
        if self.training:
            with torch.no_grad():
                current = values.detach().float()
                if dist.is_initialized():  # every rank normalises by the global batch's terms
                    dist.all_reduce(current)
                    current /= dist.get_world_size()
                decay = torch.where(self.seen, self.decay, 0.0)
                self.mean_square.mul_(decay).add_((1 - decay) * current**2)
                self.seen.fill_(True)
        return (self.weight * values / (self.mean_square.sqrt() + self.eps)).sum()
