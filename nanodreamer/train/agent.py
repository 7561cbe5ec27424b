"""Phases 2 and 3: agent finetuning (behaviour cloning + reward model, dynamics loss kept on)
and imagination training (PMPO on rollouts imagined by the frozen world model)."""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nanodreamer.agent import (
    AgentConfig,
    AgentHeads,
    action_to_bins,
    data_value_loss,
    kl_categorical,
    lambda_returns,
    log_prob,
    mtp_losses,
    pmpo_loss,
    sample_action,
)
from nanodreamer.data.latents import encode_dataset
from nanodreamer.data.sampler import labelled_episodes
from nanodreamer.dynamics import (
    Dynamics,
    DynamicsConfig,
    check_steps,
    context_inputs,
    denoise,
    shortcut_forcing_loss,
)
from nanodreamer.errors import UserError
from nanodreamer.eval.metrics import seeded
from nanodreamer.eval.pictures import save_video, side_by_side
from nanodreamer.nn.attention import KVCache
from nanodreamer.nn.normalize import RunningRMS
from nanodreamer.train.checkpoint import load_weights, read_run
from nanodreamer.train.distributed import Distributed
from nanodreamer.train.dynamics import check_actions_match, latent_batch
from nanodreamer.train.tokenizer import load_tokenizer
from nanodreamer.train.trainer import TrainConfig, window_batches

AGENT_TRAIN = TrainConfig(steps=2000, batch_size=8, lr=3e-4, warmup=100)
IMAGINATION_TRAIN = TrainConfig(steps=1000, batch_size=16, lr=3e-4, warmup=50)


def agent_train_config(world_model: str | Path) -> TrainConfig:
    """Phase-2 defaults: windows of twice the world model's context, so that half of each
    window's frames have their whole receptive field inside it (`complete_context`)."""
    return replace(AGENT_TRAIN, seq_len=2 * read_run(world_model)["model_config"]["window"])


def imagination_train_config(agent_run: str | Path) -> TrainConfig:
    """Phase-3 defaults: start contexts of exactly the world model's context window."""
    return replace(IMAGINATION_TRAIN, seq_len=read_run(agent_run)["model_config"]["window"])


class AgentModel(nn.Module):
    """The dynamics transformer with agent tokens, and the agent's heads."""

    def __init__(self, dynamics: DynamicsConfig, agent: AgentConfig):
        super().__init__()
        self.dynamics = Dynamics(dynamics)
        self.heads = AgentHeads(agent)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """Transformer outputs (B,T,S,D) -> agent features h_t (B,T,D)."""
        return h[:, :, self.dynamics.layout.slice("agents")].mean(2)

    def context_features(self, inputs: dict[str, torch.Tensor], noise=None) -> torch.Tensor:
        """Agent features (B,T,D) of dataset windows fed in as context (`latent_batch`),
        noised to the context signal level with `noise` (drawn when None)."""
        z = inputs["z1"]
        noise = torch.randn_like(z) if noise is None else noise
        context = context_inputs(self.dynamics, z, inputs["action"], inputs["has_action"], noise)
        _, h = self.dynamics(**context)
        return self.features(h)

    @torch.no_grad()
    def observe(self, z, action, has_action, cache: KVCache | None, task=None, noise=None):
        """Feed frames z (B,T,N,Dl) as context (at the context signal level, with `noise` or
        fresh noise) and return their agent features (B,T,D)."""
        noise = torch.randn_like(z) if noise is None else noise
        inputs = context_inputs(self.dynamics, z, action, has_action, noise)
        _, h = self.dynamics(**inputs, task=task, cache=cache)
        return self.features(h)


def read_agent_run(run: str | Path) -> dict:
    info = read_run(run)
    if info.get("phase") not in ("agent", "imagination"):
        raise UserError(f"{run} is a {info.get('phase')} run, but an agent run is needed here")
    return info


def load_agent(run: str | Path, device="cpu") -> tuple[AgentModel, dict]:
    info = read_agent_run(run)
    model = AgentModel(DynamicsConfig(**info["model_config"]), AgentConfig(**info["agent_config"]))
    load_weights(run, model)
    return model.to(device).eval(), info


def validation_batch(latents, seq_len: int, count: int, model: nn.Module) -> dict:
    """`count` fixed validation windows of the latent cache, on the model's device."""
    from nanodreamer.data import WindowDataset

    data = WindowDataset(latents, seq_len, split="val", seed=1, labelled_only=True)
    device = next(model.parameters()).device
    batch = torch.utils.data.default_collate([data[i] for i in range(count)])
    return {k: v.to(device) for k, v in batch.items()}


# phase 2 --------------------------------------------------------------------------------------
class AgentObjective(nn.Module):
    def __init__(self, model: AgentModel, value_gamma: float | None = None):
        """`value_gamma`: also fit the value head to the data's returns with this discount
        (`data_value_loss`); otherwise it first trains in phase 3."""
        super().__init__()
        self.model, self.value_gamma = model, value_gamma
        fit_value = value_gamma is not None
        model.heads.value.requires_grad_(fit_value)
        terms = ("dynamics", "bc", "reward", "cont") + (("value",) if fit_value else ())
        self.norm = RunningRMS(dict.fromkeys(terms, 1.0))

    def forward(self, batch: dict[str, torch.Tensor]):
        inputs = latent_batch(batch)
        dyn_loss, metrics, _ = shortcut_forcing_loss(self.model.dynamics, **inputs)
        features = self.model.context_features(inputs)
        window = self.model.dynamics.config.window
        terms = {"dynamics": dyn_loss} | mtp_losses(self.model.heads, features, batch, window)
        if self.value_gamma is not None:
            terms["value"] = data_value_loss(
                self.model.heads, features, batch, window, self.value_gamma
            )
        return self.norm(terms), metrics | {k: v.detach() for k, v in terms.items()}


class AgentPhase:
    name = "agent"

    def __init__(
        self, data, world_model: str | Path, train: TrainConfig, mtp: int = 8, init=None,
        value_gamma: float | None = None,
    ):  # fmt: skip
        """`init`: an agent or imagination run whose agent tokens and heads to continue from
        (rounds); the transformer always starts from `world_model`. `value_gamma`: see
        `AgentObjective`."""
        info = read_run(world_model, "dynamics")
        self.train, self.world_model, self.info, self.init = train, Path(world_model), info, init
        self.value_gamma = value_gamma
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.latents = encode_dataset(data, info["tokenizer"], device)
        config = replace(DynamicsConfig(**info["model_config"]), agent_tokens=1)
        check_actions_match(self.latents, config)
        if train.seq_len < config.window:
            raise UserError(
                f"--seq-len {train.seq_len} is shorter than the world model's context of "
                f"{config.window} frames: no frame would see a whole context (use >= "
                f"{config.window}, default {2 * config.window})"
            )
        self.agent_config = AgentConfig(
            dim=config.dim, action_dim=config.action_dim, action_bins=config.action_bins, mtp=mtp
        )
        torch.manual_seed(train.seed)
        self.model = AgentModel(config, self.agent_config)
        if init is not None:
            load_weights(init, self.model)
        dynamics = Dynamics(DynamicsConfig(**info["model_config"]))
        load_weights(world_model, dynamics)
        self._start_from(dynamics)
        self.objective = AgentObjective(self.model, value_gamma)

    @torch.no_grad()
    def _start_from(self, dynamics: Dynamics) -> None:
        """Copy the world model's weights; the agent tokens (appended last in each frame) get
        new embeddings and new rows and columns of the space-attention bias."""
        state = dynamics.state_dict()
        old_bias = state.pop("transformer.space_bias")
        missing, _ = self.model.dynamics.load_state_dict(state, strict=False)
        assert set(missing) == {"task_embed.weight", "agent_pos", "transformer.space_bias"}
        s = old_bias.shape[-1]
        self.model.dynamics.transformer.space_bias[:, :s, :s] = old_bias

    def batches(self, start_step: int, env: Distributed):
        return window_batches(self.latents, self.train, start_step, env, labelled_only=True)

    @torch.no_grad()
    def evaluate(self, model: AgentModel, run: Path, step: int) -> dict[str, float]:
        """Phase-2 losses on validation windows."""
        batch = validation_batch(self.latents, self.train.seq_len, 16, model)
        features = model.context_features(latent_batch(batch))
        window = model.dynamics.config.window
        return {k: v.item() for k, v in mtp_losses(model.heads, features, batch, window).items()}

    def run_info(self) -> dict:
        return {
            "model_config": asdict(self.model.dynamics.config),
            "agent_config": asdict(self.agent_config),
            "data": str(self.latents.data.path),
            "world_model": str(self.world_model.resolve()),
            "tokenizer": self.info["tokenizer"],
            "tokenizer_fingerprint": self.info["tokenizer_fingerprint"],
            "init": str(Path(self.init).resolve()) if self.init else None,
            "value_gamma": self.value_gamma,
        }


# phase 3 --------------------------------------------------------------------------------------
@torch.no_grad()
def imagine_rollouts(model: AgentModel, batch: dict, horizon: int, steps: int = 4) -> dict:
    """Start from dataset context windows and let the policy act for `horizon` steps inside the
    frozen world model. Returns agent features (B,H+1,D), actions (B,H,A), latents (B,H,N,Dl)."""
    inputs = latent_batch(batch)
    cache = model.dynamics.new_cache()
    state = model.observe(inputs["z1"], inputs["action"], inputs["has_action"], cache)[:, -1]
    return rollout_from(model, state, cache, inputs["z1"][:, -1], horizon, steps=steps)


@torch.no_grad()
def rollout_from(
    model: AgentModel, state, cache: KVCache, last, horizon: int, actions=None, steps=4
):
    """Continue `horizon` steps from agent features `state` (B,D) after the context in `cache`,
    whose newest frame has clean latents `last` (B,N,Dl), taking the policy's sampled actions,
    or `actions` (B,H,A) when given."""
    dynamics, c = model.dynamics, model.dynamics.config
    yes = torch.ones(state.shape[0], 1, dtype=torch.bool, device=state.device)
    states, taken, latents = [state], [], []
    for t in range(horizon):
        if actions is None:
            action = sample_action(model.heads.policy_logits(state, 1)[:, 0])
        else:
            action = actions[:, t].to(state.device).float()
        noise = torch.randn(state.shape[0], c.n_latents, c.latent_dim, device=state.device)
        z = last = denoise(dynamics, noise, action, yes[:, 0], steps, cache, last=last)
        state = model.observe(z[:, None], action[:, None], yes, cache)[:, -1]
        states.append(state)
        taken.append(action)
        latents.append(z)
    return {
        "states": torch.stack(states, 1),
        "actions": torch.stack(taken, 1),
        "latents": torch.stack(latents, 1),
    }


def transition_rewards(heads: AgentHeads, states: torch.Tensor) -> torch.Tensor:
    """Rewards r_1..r_H (B,H) of the imagined transitions, from states h_0..h_H (B,H+1,D):
    the distance-0 reward head on h_{t+1}, the state that has read the action taken."""
    return heads.twohot.decode(heads.reward(states[:, 1:], 1)[:, :, 0])


def imagination_starts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) bool: windows that can start a rollout: every frame real, the last not terminal."""
    return batch["valid"].all(1) & ~batch["is_terminal"][:, -1]


def action_prior_logits(store, bins: int, floor: float = 0.01) -> torch.Tensor:
    """Log-frequencies (A,bins) of the actions in `store`'s labelled episodes, per dimension,
    every bin at least `floor` (then renormalised): the data's actions, whatever the state."""
    labelled = np.flatnonzero(labelled_episodes(store))
    actions = np.concatenate([store.load(int(i), ("action",))["action"][1:] for i in labelled])
    index = action_to_bins(torch.as_tensor(actions), bins)  # (N,A)
    counts = torch.stack([torch.bincount(column, minlength=bins) for column in index.T])
    freq = (counts / counts.sum(1, keepdim=True)).clamp(min=floor)
    return (freq / freq.sum(1, keepdim=True)).log()


class ImaginationObjective(nn.Module):
    def __init__(
        self, model: AgentModel, horizon: int, gamma: float, lam: float, alpha: float, beta: float,
        steps: int, value_warmup: int = 0, prior_logits: torch.Tensor | None = None,
    ):  # fmt: skip
        """`prior_logits` (A,bins): the policy starts at, and its KL prior stays, these logits
        in every state (a zero output weight); None: the behaviour-cloning policy."""
        super().__init__()
        self.model = model
        if prior_logits is not None:
            nn.init.zeros_(model.heads.policy.out[0].weight)
            model.heads.policy.out[0].bias.data.copy_(prior_logits.flatten())
        self.prior = copy.deepcopy(model.heads.policy).requires_grad_(False)
        model.dynamics.requires_grad_(False)
        model.heads.reward.requires_grad_(False)
        model.heads.cont.requires_grad_(False)
        model.heads.policy.out[1:].requires_grad_(False)  # imagination uses distance 1 only
        model.heads.value.requires_grad_(True)
        self.horizon, self.gamma, self.lam, self.alpha, self.beta = horizon, gamma, lam, alpha, beta
        self.steps = steps  # sampling steps K per imagined frame
        # The value head starts at 0 while imagined returns are not (car racing: about -6), so
        # at first every advantage has one sign and PMPO would push down every sampled action.
        # The first `value_warmup` updates train the value alone. Saved with the objective.
        self.value_warmup = value_warmup
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.dynamics.eval()  # frozen: always in evaluation mode
        self.prior.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]):
        heads = self.model.heads
        rollout = imagine_rollouts(self.model, batch, self.horizon, self.steps)
        states, actions = rollout["states"], rollout["actions"]  # (B,H+1,D), (B,H,A)
        with torch.no_grad():  # r_{t+1}, c_{t+1} from h_{t+1}, which has read action t+1
            reward = transition_rewards(heads, states)
            cont = torch.sigmoid(heads.cont(states[:, 1:], 1)[:, :, 0, 0].float())
            weight = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)
        value_logits = heads.value(states)
        value = heads.twohot.decode(value_logits)
        returns = lambda_returns(reward, cont, value.detach(), self.gamma, self.lam)
        advantage = returns - value[:, :-1].detach()
        logits = heads.policy_logits(states[:, :-1], 1)[:, :, 0]
        prior_logits = self.prior(states[:, :-1], 1)[:, :, 0].unflatten(-1, logits.shape[-2:])
        logp = log_prob(logits, actions)
        kl = kl_categorical(logits, prior_logits)
        keep = weight.flatten() > 0.5  # states before a predicted episode end
        policy_loss = pmpo_loss(
            logp.flatten()[keep],
            advantage.flatten()[keep],
            kl.flatten()[keep],
            self.alpha,
            self.beta,
        )
        value_loss = (heads.twohot.loss(value_logits[:, :-1], returns) * weight).mean()
        if self.training:
            self.updates += 1
        if self.updates <= self.value_warmup:
            policy_loss = policy_loss.detach()  # no gradient: the optimiser skips the policy
        metrics = {
            "return": returns[:, 0].mean().detach(),
            "reward": reward.mean(),
            "advantage_positive": (advantage >= 0).float().mean(),
            "kl": kl.mean().detach(),
            "value_error": (value[:, :-1] - returns).abs().mean().detach(),
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
        }
        return policy_loss + value_loss, metrics


class ImaginationPhase:
    name = "imagination"

    def __init__(
        self,
        agent_run: str | Path,
        train: TrainConfig,
        horizon: int = 16,
        gamma: float = 0.997,
        lam: float = 0.95,
        alpha: float = 0.5,
        beta: float = 0.3,
        steps: int = 4,
        value_warmup: int = 0,
        prior: str = "bc",
        init: str | Path | None = None,
    ):
        """`prior`: where the policy starts and what its KL term pulls it toward: "bc" the
        agent run's behaviour-cloning policy; "uniform" every action alike (an entropy bonus);
        "data" the data's action frequencies (`action_prior_logits`): broad like "uniform",
        but actions the data never took, whose imagined outcomes are guesses, start unlikely.
        `init`: an imagination run whose policy and value to continue from (rounds)."""
        model, info = load_agent(agent_run)
        if info["phase"] != "agent":
            raise UserError(f"{agent_run} is an {info['phase']} run: start from an agent run")
        self.info, self.train, self.agent_run = info, train, Path(agent_run)
        self.model = model.train()
        check_steps(model.dynamics, steps)
        self.latents = encode_dataset(info["data"], info["tokenizer"])
        window = model.dynamics.config.window
        if train.seq_len < window:
            raise UserError(
                f"--seq-len {train.seq_len} is shorter than the world model's context of "
                f"{window} frames: rollouts would start from a partial context"
            )
        if self.latents.lengths.max() <= train.seq_len:
            raise UserError(
                f"no episode of {self.latents.data.path} is longer than --seq-len "
                f"{train.seq_len}: rollouts need a real, non-terminal context of that length"
            )
        self.settings = {
            "horizon": horizon,
            "gamma": gamma,
            "lambda": lam,
            "alpha": alpha,
            "beta": beta,
            "steps": steps,
            "value_warmup": value_warmup,
            "prior": prior,
        }
        bins = (model.heads.config.action_dim, model.heads.config.action_bins)
        priors = {
            "bc": lambda: None,
            "uniform": lambda: torch.zeros(bins),
            "data": lambda: action_prior_logits(self.latents, bins[1]),
        }
        if prior not in priors:
            raise UserError(f"unknown prior {prior!r}: use one of {', '.join(priors)}")
        self.objective = ImaginationObjective(
            model, horizon, gamma, lam, alpha, beta, steps, value_warmup, priors[prior]()
        )
        self.init = init
        if init is not None:
            load_weights(init, model, only=("heads.policy.", "heads.value."))

    def batches(self, start_step: int, env: Distributed):
        """Dataset windows that can start a rollout (`imagination_starts`); the others (a
        window ending on a terminal or padded frame) are dropped from their batch."""
        for batch in window_batches(self.latents, self.train, start_step, env, labelled_only=True):
            keep = imagination_starts(batch)
            if keep.any():
                yield {k: v[keep] for k, v in batch.items()}

    @torch.no_grad()
    def evaluate(self, model: AgentModel, run: Path, step: int) -> dict[str, float]:
        """Imagined returns on validation contexts, and a GIF of the policy's imagination."""
        batch = validation_batch(self.latents, self.train.seq_len, 16, model)
        keep = imagination_starts(batch)
        batch = {k: v[keep][:8] for k, v in batch.items()}
        device = batch["latents"].device
        objective = self.objective
        with seeded(0):
            rollout = imagine_rollouts(model, batch, objective.horizon, objective.steps)
        reward = transition_rewards(model.heads, rollout["states"])
        tokenizer = load_tokenizer(self.info["tokenizer"], device)
        frames = tokenizer.decode(torch.cat([batch["latents"].float(), rollout["latents"]], 1))
        save_video(run / "imagined_policy.gif", side_by_side(frames[:4]), fps=8)
        return {"imagined_reward_sum": reward.sum(1).mean().item()}

    def run_info(self) -> dict:
        return {
            k: v
            for k, v in self.info.items()
            if k not in ("phase", "train", "steps_done", "finished")
        } | {
            "agent_run": str(self.agent_run.resolve()),
            "imagination": self.settings,
            "init": str(Path(self.init).resolve()) if self.init else None,
        }
