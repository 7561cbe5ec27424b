"""Phase 3: imagination training. The policy acts inside the frozen world model of an agent
run (`agent.imagine_rollouts`) and learns by PMPO from the lambda-returns of the imagined
rewards, beside a value head; a KL term keeps it near a prior."""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nanodreamer.agent import (
    AgentModel,
    action_to_bins,
    continuation,
    imagine_rollouts,
    kl_categorical,
    lambda_returns,
    log_prob,
    pmpo_loss,
    transition_rewards,
)
from nanodreamer.data.latents import encode_dataset
from nanodreamer.data.sampler import labelled_episodes
from nanodreamer.dynamics import check_steps
from nanodreamer.errors import UserError
from nanodreamer.eval.metrics import seeded
from nanodreamer.eval.pictures import save_video, side_by_side
from nanodreamer.recipes import ImaginationSettings
from nanodreamer.runs import load_agent, load_tokenizer, load_weights, read_run
from nanodreamer.train.agent import validation_batch
from nanodreamer.train.distributed import Distributed
from nanodreamer.train.trainer import Phase, TrainConfig, window_batches

IMAGINATION_TRAIN = TrainConfig(steps=1000, batch_size=16, lr=3e-4, warmup=50)
LAMBDA, ALPHA = 0.95, 0.5  # lambda-return mixing; PMPO's weight of positive advantages (SPEC)


def imagination_train_config(agent_run: str | Path) -> TrainConfig:
    """Phase-3 defaults: start contexts of exactly the world model's context window."""
    return replace(IMAGINATION_TRAIN, seq_len=read_run(agent_run)["model_config"]["window"])


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
    def __init__(self, model: AgentModel, settings: ImaginationSettings, prior_logits=None):
        """`prior_logits` (A,bins): the policy starts at, and its KL prior stays, these logits
        in every state (a zero output weight); None: the behaviour-cloning policy."""
        super().__init__()
        self.model, self.settings = model, settings
        if prior_logits is not None:
            nn.init.zeros_(model.heads.policy.out[0].weight)
            model.heads.policy.out[0].bias.data.copy_(prior_logits.flatten())
        self.prior = copy.deepcopy(model.heads.policy).requires_grad_(False)
        model.dynamics.requires_grad_(False)
        model.heads.reward.requires_grad_(False)
        model.heads.cont.requires_grad_(False)
        model.heads.policy.out[1:].requires_grad_(False)  # imagination uses distance 1 only
        model.heads.value.requires_grad_(True)
        # The value head starts at 0 while imagined returns are not (car racing: about -6), so
        # at first every advantage has one sign and PMPO would push down every sampled action.
        # The first `value_warmup` updates train the value alone. Saved with the objective.
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.dynamics.eval()  # frozen: always in evaluation mode
        self.prior.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]):
        heads, c = self.model.heads, self.settings
        rollout = imagine_rollouts(self.model, batch, c.horizon, c.sampling_steps)
        states, actions = rollout["states"], rollout["actions"]  # (B,H+1,D), (B,H,A)
        with torch.no_grad():  # r_{t+1}, c_{t+1} from h_{t+1}, which has read action t+1
            reward, (cont, weight) = transition_rewards(heads, states), continuation(heads, states)
        value_logits = heads.value(states)
        value = heads.twohot.decode(value_logits)
        returns = lambda_returns(reward, cont, value.detach(), c.gamma, LAMBDA)
        advantage = returns - value[:, :-1].detach()
        logits = heads.policy_logits(states[:, :-1], 1)[:, :, 0]
        prior_logits = self.prior(states[:, :-1], 1)[:, :, 0].unflatten(-1, logits.shape[-2:])
        logp = log_prob(logits, actions)
        kl = kl_categorical(logits, prior_logits)
        keep = weight.flatten() > 0.5  # states before a predicted episode end
        policy_loss = pmpo_loss(*(x.flatten()[keep] for x in (logp, advantage, kl)), ALPHA, c.beta)
        value_loss = (heads.twohot.loss(value_logits[:, :-1], returns) * weight).mean()
        if self.training:
            self.updates += 1
        if self.updates <= c.value_warmup:
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


class ImaginationPhase(Phase):
    name = "imagination"

    def __init__(self, agent_run, train: TrainConfig, settings=None, init=None):
        """`settings`: the recipe's (`recipes.ImaginationSettings`; default: car racing's).
        Its `prior`, where the policy starts and what its KL term pulls it toward: "bc" the
        agent run's behaviour-cloning policy; "data" the data's action frequencies in every
        state (`action_prior_logits`): actions the data never took, whose imagined outcomes
        are guesses, start unlikely. `init`: an imagination run to continue (rounds)."""
        settings = settings or ImaginationSettings()
        model, info = load_agent(agent_run)
        if info["phase"] != "agent":
            raise UserError(f"{agent_run} is an {info['phase']} run: start from an agent run")
        self.info, self.train, self.agent_run = info, train, Path(agent_run)
        self.model, self.settings = model.train(), settings
        check_steps(model.dynamics, settings.sampling_steps)
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
        if settings.prior not in ("bc", "data"):
            raise UserError(f"unknown prior {settings.prior!r}: use bc or data")
        bins = model.heads.config.action_bins
        prior = action_prior_logits(self.latents, bins) if settings.prior == "data" else None
        self.objective = ImaginationObjective(model, settings, prior)
        self.init = init
        if init is not None:
            load_weights(init, model, only=("heads.policy.", "heads.value."))

    def batches(self, start_step: int, env: Distributed):
        """Dataset windows that can start a rollout (`imagination_starts`), the others dropped."""
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
        device, c = batch["latents"].device, self.settings
        with seeded(0):
            rollout = imagine_rollouts(model, batch, c.horizon, c.sampling_steps)
        reward = transition_rewards(model.heads, rollout["states"])
        tokenizer = load_tokenizer(self.info["tokenizer"], device)
        frames = tokenizer.decode(torch.cat([batch["latents"].float(), rollout["latents"]], 1))
        save_video(run / "imagined_policy.gif", side_by_side(frames[:4]), fps=8)
        return {"imagined_reward_sum": reward.sum(1).mean().item()}

    def run_info(self) -> dict:
        skip = ("phase", "train", "steps_done", "finished")
        return {k: v for k, v in self.info.items() if k not in skip} | {
            "agent_run": str(self.agent_run.resolve()),
            "imagination": asdict(self.settings) | {"lambda": LAMBDA, "alpha": ALPHA},
            "init": str(Path(self.init).resolve()) if self.init else None,
        }
