"""Acting in the real environment with a trained agent, and evaluating its return."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nanodreamer import envs
from nanodreamer.agent import sample_action
from nanodreamer.data import RandomPolicy
from nanodreamer.data.collect import episode_seed
from nanodreamer.errors import UserError
from nanodreamer.eval.pictures import save_video
from nanodreamer.tokenizer import frames_from_uint8
from nanodreamer.train.agent import load_agent
from nanodreamer.train.tokenizer import load_tokenizer


class AgentPolicy:
    """Acts from pixels: encode each observation (streaming tokenizer), feed it with the action
    that led to it into the dynamics transformer as context (the same signal level as in
    imagination), and read the next action from the policy head on the agent token. Every
    environment keeps its own context window, reset when its episode starts."""

    def __init__(self, run: str | Path, num_envs: int = 1, mode: bool = False, device=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.info = load_agent(run, self.device)
        self.tokenizer = load_tokenizer(self.info["tokenizer"], self.device)
        self.mode = mode
        a = self.model.dynamics.config.action_dim
        self.last_action = torch.zeros(num_envs, a, device=self.device)
        self.caches = [None] * num_envs

    def reset(self, index: int) -> None:
        self.caches[index] = (self.tokenizer.new_cache(), self.model.dynamics.new_cache())
        self.last_action[index] = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray, is_first: np.ndarray) -> np.ndarray:
        """obs (N,H,W,C) uint8, is_first (N,) -> actions (N,A) in [-1, 1]."""
        actions = []
        for i in range(len(obs)):
            if is_first[i] or self.caches[i] is None:
                self.reset(i)
            encoder, context = self.caches[i]
            frame = frames_from_uint8(torch.as_tensor(obs[i], device=self.device))[None, None]
            z = self.tokenizer.encode(frame, encoder)
            has_action = torch.tensor([[not is_first[i]]], device=self.device)
            state = self.model.observe(z, self.last_action[i][None, None], has_action, context)
            logits = self.model.heads.policy_logits(state, 1)[:, 0]
            action = sample_action(logits, mode=self.mode)[0]
            self.last_action[i] = action
            actions.append(action)
        return torch.stack(actions).cpu().numpy()


def run_episodes(
    env_name: str,
    env_options: dict,
    policy,
    episodes: int,
    seed: int = 0,
    video: str | Path | None = None,
    desc: str = "episodes",
) -> list[float]:
    """Returns of `episodes` episodes (seeded from `seed`); optionally a video of the first."""
    env = envs.make(env_name, **env_options)
    returns, frames = [], []
    for episode in tqdm(range(episodes), desc=desc, unit="ep"):
        obs, _ = env.reset(seed=episode_seed(seed, 10_000 + episode))
        is_first, total, done = True, 0.0, False
        while not done:
            if video is not None and episode == 0:
                frames.append(obs)
            action = policy.act(obs[None], np.array([is_first]))[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            is_first, done = False, terminated or truncated
        returns.append(total)
    env.close()
    if video is not None and frames:
        save_video(video, np.stack(frames), fps=25, scale=2)
    return returns


def evaluate_agent(
    run: str | Path,
    env_name: str,
    episodes: int,
    *,
    seed: int = 0,
    video=None,
    mode: bool = False,
    random: bool = True,
) -> dict[str, float]:
    """Mean/std return of the agent in the real env, beside a random policy on the same seeds."""
    policy = AgentPolicy(run, mode=mode)
    info = policy.info
    data_env, options = _data_env(info)
    if env_name != data_env:
        raise UserError(
            f"{run} was trained on {data_env!r}, not {env_name!r}: evaluate it on its own env"
        )
    probe = envs.make(env_name, **options)
    if probe.action_space.shape[0] != policy.model.dynamics.config.action_dim:
        raise UserError(
            f"{env_name} has {probe.action_space.shape[0]}-D actions, the agent "
            f"{policy.model.dynamics.config.action_dim}-D"
        )
    probe.close()
    returns = run_episodes(env_name, options, policy, episodes, seed, video, desc="agent")
    results = {
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "returns": returns,
        "episodes": episodes,
    }
    if random:
        a = policy.model.dynamics.config.action_dim
        low, high = envs.RANDOM_ACTION_RANGE.get(env_name, (-1.0, 1.0))
        baseline = RandomPolicy(1, a, seed=seed, low=low, high=high)
        random_returns = run_episodes(env_name, options, baseline, episodes, seed, desc="random")
        results |= {
            "random_return_mean": float(np.mean(random_returns)),
            "random_return_std": float(np.std(random_returns)),
        }
    return results


def _data_env(info: dict) -> tuple[str, dict]:
    from nanodreamer.data import EpisodeStore

    manifest = EpisodeStore(info["data"]).manifest
    return manifest["env"], manifest["env_options"]
