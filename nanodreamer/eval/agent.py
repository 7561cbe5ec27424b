"""Acting in the real environment with a trained agent, and evaluating its return."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nanodreamer import envs
from nanodreamer.agent import sample_action
from nanodreamer.data.collect import episode_seed, random_policy
from nanodreamer.errors import UserError
from nanodreamer.eval.pictures import save_video
from nanodreamer.tokenizer import frames_from_uint8
from nanodreamer.train.agent import load_agent, read_agent_run
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
    opponents=None,
) -> np.ndarray:
    """Returns (episodes, cars) of `episodes` episodes seeded from `seed` (cars = 1 unless the
    env races several); `opponents`, when given, drives every car but the first. Optionally a
    video of the first episode, all cars' views side by side."""
    env = envs.make(env_name, **env_options)
    cars = envs.num_streams(env)
    returns, frames = [], []
    for episode in tqdm(range(episodes), desc=desc, unit="ep"):
        obs, _ = env.reset(seed=episode_seed(seed, 10_000 + episode))
        is_first, total, done = np.ones(cars, bool), np.zeros(cars), False
        while not done:
            views = obs.reshape(cars, *obs.shape[-3:])  # (cars, H, W, C)
            if video is not None and episode == 0:
                frames.append(np.concatenate(list(views), axis=1))
            action = policy.act(views, is_first)
            if opponents is not None:
                action[1:] = opponents.act(views[1:], is_first[1:])
            obs, reward, terminated, truncated, _ = env.step(action.reshape(env.action_space.shape))
            total += np.asarray(reward).reshape(cars)
            is_first[:], done = False, terminated or truncated
        returns.append(total)
    env.close()
    if video is not None and frames:
        save_video(video, np.stack(frames), fps=25, scale=2)
    return np.stack(returns)


def evaluate_agent(
    run: str | Path,
    env_name: str,
    episodes: int,
    *,
    seed: int = 0,
    video=None,
    mode: bool = False,
    random: bool = True,
    num_cars: int | None = None,
    opponents: str = "self",
) -> dict:
    """Mean/std return of the agent in the real env, beside a random policy on the same seeds.

    In multi-car racing every car counts as an episode; `opponents="random"` races the policy
    (car 0) against random cars and reports car 0's return. `per_car_return_mean` lists each
    car's mean return.
    """
    info = read_agent_run(run)
    data_env, options = _data_env(info)
    if env_name != data_env:
        raise UserError(
            f"{run} was trained on {data_env!r}, not {env_name!r}: evaluate it on its own env"
        )
    if num_cars is not None:
        if env_name != "multi-car-racing":
            raise UserError("num_cars is for multi-car-racing only")
        options = options | {"num_cars": num_cars}
    if opponents not in ("self", "random"):
        raise UserError(f"opponents must be 'self' or 'random', got {opponents!r}")
    probe = envs.make(env_name, **options)
    cars, action_dim = envs.num_streams(probe), probe.action_space.shape[-1]
    probe.close()
    policy = AgentPolicy(run, num_envs=cars, mode=mode)
    if action_dim != policy.model.dynamics.config.action_dim:
        raise UserError(
            f"{env_name} has {action_dim}-D actions, the agent "
            f"{policy.model.dynamics.config.action_dim}-D"
        )

    def random_for(streams: int):
        return random_policy(env_name, streams, action_dim, seed)

    rivals = random_for(cars - 1) if opponents == "random" and cars > 1 else None
    returns = run_episodes(env_name, options, policy, episodes, seed, video, "agent", rivals)
    scored = returns[:, :1] if rivals is not None else returns
    results = {
        "return_mean": float(scored.mean()),
        "return_std": float(scored.std()),
        "returns": scored.ravel().tolist(),
        "episodes": episodes,
    }
    if cars > 1:
        results["per_car_return_mean"] = returns.mean(0).tolist()
    if random:
        random_returns = run_episodes(
            env_name, options, random_for(cars), episodes, seed, desc="random"
        )
        results |= {
            "random_return_mean": float(random_returns.mean()),
            "random_return_std": float(random_returns.std()),
        }
    return results


def _data_env(info: dict) -> tuple[str, dict]:
    from nanodreamer.data import EpisodeStore

    manifest = EpisodeStore(info["data"]).manifest
    return manifest["env"], manifest["env_options"]
