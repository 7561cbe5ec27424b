"""The agent (SPEC "Agent"): heads on the dynamics transformer's agent-token outputs h_t.

Phase 2 trains a policy (a categorical over bins per action dimension), a reward model
(symexp two-hot) and a continuation head by multi-token prediction: from h_t, one output layer
per distance k = 1..L predicts action[t+k], reward[t+k] and continuation[t+k]. Phase 3 trains
the policy and a value head on imagined rollouts with PMPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nanodreamer.nn.distributions import TwoHot


@dataclass
class AgentConfig:
    dim: int = 128  # agent-token width (the dynamics model's dim)
    action_dim: int = 2
    action_bins: int = 32
    mtp: int = 8  # L: distances predicted from each h_t
    hidden: int = 256
    bins: int = 63  # two-hot bins for rewards and values


def mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.RMSNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, out))


class MTPHead(nn.Module):
    """A small MLP trunk with one output layer per distance k = 1..L: (..., D) -> (..., L, out)."""

    def __init__(self, dim: int, hidden: int, out: int, distances: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.RMSNorm(dim), nn.Linear(dim, hidden), nn.SiLU())
        self.out = nn.ModuleList(nn.Linear(hidden, out) for _ in range(distances))

    def forward(self, h: torch.Tensor, distances: int | None = None) -> torch.Tensor:
        x = self.trunk(h)
        return torch.stack([layer(x) for layer in self.out[:distances]], -2)


class AgentHeads(nn.Module):
    def __init__(self, config: AgentConfig):
        super().__init__()
        c = self.config = config
        self.policy = MTPHead(c.dim, c.hidden, c.action_dim * c.action_bins, c.mtp)
        self.reward = MTPHead(c.dim, c.hidden, c.bins, c.mtp)
        self.cont = MTPHead(c.dim, c.hidden, 1, c.mtp)
        self.value = mlp(c.dim, c.hidden, c.bins)
        nn.init.zeros_(self.value[-1].weight)  # a new value head starts at 0
        nn.init.zeros_(self.value[-1].bias)
        self.twohot = TwoHot(c.bins)

    def policy_logits(self, h: torch.Tensor, distances: int | None = None) -> torch.Tensor:
        """h (..., D) -> logits (..., L, A, bins)."""
        c = self.config
        return self.policy(h, distances).unflatten(-1, (c.action_dim, c.action_bins))


# actions <-> bins ---------------------------------------------------------------------------------
def action_to_bins(action: torch.Tensor, bins: int) -> torch.Tensor:
    """[-1, 1] -> bin index, the same cut as the dynamics model's action embedding."""
    return ((action.float() + 1) / 2 * bins).floor().clamp(0, bins - 1).long()


def bins_to_action(index: torch.Tensor, bins: int) -> torch.Tensor:
    """bin index -> the bin's centre in [-1, 1]."""
    return (index.float() + 0.5) / bins * 2 - 1


def sample_action(logits: torch.Tensor, mode: bool = False, generator=None) -> torch.Tensor:
    """logits (..., A, bins) -> actions (..., A) in [-1, 1]: sampled, or the most likely bins."""
    bins = logits.shape[-1]
    if mode:
        index = logits.argmax(-1)
    else:
        probs = logits.float().softmax(-1)
        index = torch.multinomial(probs.reshape(-1, bins), 1, generator=generator)
        index = index.reshape(probs.shape[:-1])
    return bins_to_action(index, bins)


def log_prob(logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log pi(action) summed over action dimensions: logits (..., A, bins), action (..., A)."""
    index = action_to_bins(action, logits.shape[-1])
    return F.log_softmax(logits.float(), -1).gather(-1, index[..., None])[..., 0].sum(-1)


def kl_categorical(logits: torch.Tensor, prior_logits: torch.Tensor) -> torch.Tensor:
    """KL[pi || prior] summed over action dimensions: (..., A, bins) -> (...)."""
    logp, logq = F.log_softmax(logits.float(), -1), F.log_softmax(prior_logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum((-1, -2))


# phase 2: multi-token prediction ------------------------------------------------------------------
def mtp_targets(batch: dict[str, torch.Tensor], distances: int) -> dict[str, torch.Tensor]:
    """Targets for h_t at distances k = 1..L: action[t+k], reward[t+k], continuation[t+k]
    (B,T,L,...), and `mask` (B,T,L): t+k inside the window and a real frame."""
    valid = batch["valid"]
    b, t = valid.shape
    index = torch.arange(t, device=valid.device)[:, None] + torch.arange(
        1, distances + 1, device=valid.device
    )
    inside = index < t  # (T,L)
    index = index.clamp(max=t - 1)
    take = lambda x: x[:, index]  # noqa: E731 - (B,T,...) -> (B,T,L,...)
    return {
        "action": take(batch["action"]),
        "reward": take(batch["reward"]),
        "cont": take((~batch["is_terminal"]).float()),
        "mask": take(valid) & inside,
    }


def mtp_losses(heads: AgentHeads, h: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
    """Behaviour cloning, reward and continuation losses of agent outputs h (B,T,D)."""
    c = heads.config
    targets = mtp_targets(batch, c.mtp)
    mask = targets["mask"].float()
    count = mask.sum().clamp(min=1)
    bc = -log_prob(heads.policy_logits(h), targets["action"])
    reward = heads.twohot.loss(heads.reward(h), targets["reward"])
    cont = F.binary_cross_entropy_with_logits(
        heads.cont(h)[..., 0].float(), targets["cont"], reduction="none"
    )
    return {
        name: (x * mask).sum() / count
        for name, x in (("bc", bc), ("reward", reward), ("cont", cont))
    }


# phase 3: imagination -----------------------------------------------------------------------------
def lambda_returns(
    reward: torch.Tensor, cont: torch.Tensor, value: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """R_t = r_{t+1} + gamma c_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1}), R_H = v_H.

    reward, cont (B,H): r_{t+1}, c_{t+1} for t = 0..H-1; value (B,H+1): v_0..v_H.
    Returns R_0..R_{H-1} (B,H)."""
    returns = [value[:, -1]]
    for t in reversed(range(reward.shape[1])):
        bootstrap = (1 - lam) * value[:, t + 1] + lam * returns[-1]
        returns.append(reward[:, t] + gamma * cont[:, t] * bootstrap)
    return torch.stack(returns[1:][::-1], 1)


def pmpo_loss(
    logp: torch.Tensor,  # (N,) log pi_theta(a|s)
    advantage: torch.Tensor,  # (N,) R - v
    kl: torch.Tensor,  # (N,) KL[pi_theta || pi_prior]
    alpha: float = 0.5,
    beta: float = 0.3,
) -> torch.Tensor:
    """PMPO: (1-alpha)/|D-| sum_{D-} ln pi - alpha/|D+| sum_{D+} ln pi + beta/N sum KL.
    States split by the sign of the advantage; no return normalisation, no entropy bonus."""
    positive = (advantage >= 0).float()
    negative = 1 - positive
    loss_neg = (1 - alpha) * (logp * negative).sum() / negative.sum().clamp(min=1)
    loss_pos = -alpha * (logp * positive).sum() / positive.sum().clamp(min=1)
    return loss_neg + loss_pos + beta * kl.mean()
