"""The agent (SPEC "Agent"): heads on the dynamics transformer's agent-token outputs h_t.

Phase 2 trains a policy (a categorical over bins per action dimension), a reward model
(symexp two-hot) and a continuation head by multi-token prediction: from h_t, one output layer
per distance predicts action[t+k] (k = 1..L), reward[t+k] and continuation[t+k] (k = 0..L).
h_t has read action[t] and obs[t], so distance 0, the one imagination uses, gives the reward
and continuation of the transition *into* frame t. Phase 3 trains the policy and a value head
on imagined rollouts (`rollout_from`) with PMPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nanodreamer.dynamics import Dynamics, DynamicsConfig, context_inputs, denoise, latent_batch
from nanodreamer.nn.attention import KVCache
from nanodreamer.nn.distributions import TwoHot


@dataclass
class AgentConfig:
    dim: int = 128  # agent-token width (the dynamics model's dim)
    action_dim: int = 2
    action_bins: int = 32
    mtp: int = 8  # L: future actions (1..L), rewards and continuations (0..L) from each h_t
    hidden: int = 256
    bins: int = 63  # two-hot bins for rewards and values


def mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.RMSNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, out))


class MTPHead(nn.Module):
    """A small MLP trunk with one output layer per distance: (..., D) -> (..., distances, out)."""

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
        self.reward = MTPHead(c.dim, c.hidden, c.bins, c.mtp + 1)  # distances 0..L
        self.cont = MTPHead(c.dim, c.hidden, 1, c.mtp + 1)
        self.value = mlp(c.dim, c.hidden, c.bins)
        nn.init.zeros_(self.value[-1].weight)  # a new value head starts at 0
        nn.init.zeros_(self.value[-1].bias)
        self.twohot = TwoHot(c.bins)

    def policy_logits(self, h: torch.Tensor, distances: int | None = None) -> torch.Tensor:
        """h (..., D) -> logits (..., L, A, bins) of action[t+1..t+L]."""
        c = self.config
        return self.policy(h, distances).unflatten(-1, (c.action_dim, c.action_bins))


class AgentModel(nn.Module):
    """The dynamics transformer with agent tokens, and the agent's heads."""

    def __init__(self, dynamics: DynamicsConfig, agent: AgentConfig):
        super().__init__()
        self.dynamics = Dynamics(dynamics)
        self.heads = AgentHeads(agent)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """Transformer outputs (B,T,S,D) -> agent features h_t (B,T,D)."""
        return h[:, :, self.dynamics.layout.slice("agents")].mean(2)

    def context_features(self, inputs: dict, noise=None, cache=None) -> torch.Tensor:
        """Agent features (B,T,D) of frames fed in as context (`latent_batch` inputs), noised
        to the context signal level with `noise` (drawn when None)."""
        z = inputs["z1"]
        noise = torch.randn_like(z) if noise is None else noise
        context = context_inputs(self.dynamics, z, inputs["action"], inputs["has_action"], noise)
        return self.features(self.dynamics(**context, cache=cache)[1])

    @torch.no_grad()
    def observe(self, z, action, has_action, cache: KVCache | None, noise=None):
        """`context_features` of frames z (B,T,N,Dl), no gradient, extending `cache`."""
        inputs = {"z1": z, "action": action, "has_action": has_action}
        return self.context_features(inputs, noise, cache)


@torch.no_grad()
def rollout_from(model: AgentModel, state, cache: KVCache, horizon: int, actions=None, steps=4):
    """Continue `horizon` steps from agent features `state` (B,D) after the context in `cache`,
    taking the policy's sampled actions, or `actions` (B,H,A) when given. Returns agent
    features (B,H+1,D), actions (B,H,A) and imagined latents (B,H,N,Dl)."""
    c = model.dynamics.config
    yes = torch.ones(state.shape[0], 1, dtype=torch.bool, device=state.device)
    states, taken, latents = [state], [], []
    for t in range(horizon):
        if actions is None:
            action = sample_action(model.heads.policy_logits(state, 1)[:, 0])
        else:
            action = actions[:, t].to(state.device).float()
        noise = torch.randn(state.shape[0], c.n_latents, c.latent_dim, device=state.device)
        z = denoise(model.dynamics, noise, action, yes[:, 0], steps, cache)
        state = model.observe(z[:, None], action[:, None], yes, cache)[:, -1]
        states.append(state)
        taken.append(action)
        latents.append(z)
    outputs = {"states": states, "actions": taken, "latents": latents}
    return {k: torch.stack(v, 1) for k, v in outputs.items()}


@torch.no_grad()
def imagine_rollouts(model: AgentModel, batch: dict, horizon: int, steps: int = 4) -> dict:
    """`rollout_from` the end of dataset context windows, inside the frozen world model."""
    inputs = latent_batch(batch)
    cache = model.dynamics.new_cache()
    state = model.observe(inputs["z1"], inputs["action"], inputs["has_action"], cache)[:, -1]
    return rollout_from(model, state, cache, horizon, steps=steps)


def transition_rewards(heads: AgentHeads, states: torch.Tensor) -> torch.Tensor:
    """Rewards r_1..r_H (B,H) of the imagined transitions, from states h_0..h_H (B,H+1,D):
    the distance-0 reward head on h_{t+1}, the state that has read the action taken."""
    return heads.twohot.decode(heads.reward(states[:, 1:], 1)[:, :, 0])


def continuation(heads: AgentHeads, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From states h_0..h_H (B,H+1,D): continuation c_1..c_H (B,H) and the probability (B,H)
    that the episode is still running at each transition (1 for the first)."""
    cont = torch.sigmoid(heads.cont(states[:, 1:], 1)[:, :, 0, 0].float())
    return cont, torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)


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
def complete_context(is_first: torch.Tensor, window: int) -> torch.Tensor:
    """(B,T) bool: frames whose receptive field (`window` frames, or back to the episode's
    start) lies inside the training window: computed as when acting, only these train heads."""
    t = torch.arange(is_first.shape[1], device=is_first.device)
    return (t >= window - 1)[None, :] | is_first[:, :1]


def _ahead(x: torch.Tensor, distances: range) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B,T,...) -> (x[:, t+k] (B,T,K,...), inside (T,K): t+k lies in the window)."""
    t = x.shape[1]
    index = torch.arange(t, device=x.device)[:, None] + torch.tensor(distances, device=x.device)
    return x[:, index.clamp(max=t - 1)], index < t


def mtp_targets(batch: dict[str, torch.Tensor], distances: int, window: int) -> dict:
    """Targets for h_t: action[t+k] for k = 1..L and reward[t+k], continuation[t+k] for
    k = 0..L (B,T,K,...), with masks (B,T,K): t+k a real frame of the window that is not an
    episode's first (which no action led to), and h_t computed from a complete context."""
    source = complete_context(batch["is_first"], window)[:, :, None]
    real = batch["valid"] & ~batch["is_first"]
    targets = {}
    for name, ks in (("policy", range(1, distances + 1)), ("reward", range(distances + 1))):
        mask, inside = _ahead(real, ks)
        targets[f"{name}_mask"] = mask & inside & source
    targets["action"] = _ahead(batch["action"], range(1, distances + 1))[0]
    targets["reward"] = _ahead(batch["reward"], range(distances + 1))[0]
    targets["cont"] = _ahead((~batch["is_terminal"]).float(), range(distances + 1))[0]
    return targets


def mtp_losses(heads: AgentHeads, h: torch.Tensor, batch: dict, window: int) -> dict:
    """Behaviour cloning, reward and continuation losses of agent outputs h (B,T,D)."""
    targets = mtp_targets(batch, heads.config.mtp, window)
    bc = -log_prob(heads.policy_logits(h), targets["action"])
    return {"bc": _mean(bc, targets["policy_mask"].float())} | outcome_losses(heads, h, targets)


def outcome_losses(heads: AgentHeads, h: torch.Tensor, targets: dict) -> dict[str, torch.Tensor]:
    """Reward and continuation losses of agent features h (..., D) against `mtp_targets`
    (..., K): half for distance 0, the transition imagination reads, half for distances 1..L
    (averaged over all, distance 0 would get only 1/(L+1) of the loss)."""
    reward = heads.twohot.loss(heads.reward(h), targets["reward"])
    cont = F.binary_cross_entropy_with_logits(
        heads.cont(h)[..., 0].float(), targets["cont"], reduction="none"
    )
    mask = targets["reward_mask"].float()

    def now_and_ahead(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * _mean(x[..., :1], mask[..., :1]) + 0.5 * _mean(x[..., 1:], mask[..., 1:])

    return {"reward": now_and_ahead(reward), "cont": now_and_ahead(cont)}


def _mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def data_value_loss(
    heads: AgentHeads, h: torch.Tensor, batch: dict, window: int, gamma: float, lam: float = 0.95
) -> torch.Tensor:
    """Value of the policy that collected the data: the value head on h_t (B,T,D) toward the
    lambda-returns of the window's recorded rewards, bootstrapped from its own values."""
    logits = heads.value(h)  # (B,T,bins)
    value = heads.twohot.decode(logits).detach()
    reward, cont = batch["reward"][:, 1:].float(), (~batch["is_terminal"][:, 1:]).float()
    has_next = batch["valid"][:, 1:]
    returns = lambda_returns(reward, cont, value, gamma, lam, ends=~has_next)  # (B,T-1)
    mask = complete_context(batch["is_first"], window)[:, :-1] & has_next
    return _mean(heads.twohot.loss(logits[:, :-1], returns), mask.float())


# phase 3: imagination -----------------------------------------------------------------------------
def lambda_returns(
    reward: torch.Tensor, cont: torch.Tensor, value: torch.Tensor, gamma: float, lam: float,
    ends: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """R_t = r_{t+1} + gamma c_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1}), R_H = v_H.

    reward, cont (B,H): r_{t+1}, c_{t+1} for t = 0..H-1; value (B,H+1): v_0..v_H; `ends` (B,H):
    step t has no next state (padding follows a truncated episode): R_t = v_t.
    Returns R_0..R_{H-1} (B,H)."""
    returns = [value[:, -1]]
    for t in reversed(range(reward.shape[1])):
        bootstrap = (1 - lam) * value[:, t + 1] + lam * returns[-1]
        step = reward[:, t] + gamma * cont[:, t] * bootstrap
        returns.append(step if ends is None else torch.where(ends[:, t], value[:, t], step))
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
    return (
        (1 - alpha) * _mean(logp, 1 - positive) - alpha * _mean(logp, positive) + beta * kl.mean()
    )
