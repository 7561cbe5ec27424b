"""Acting in the real environment with a trained agent, and evaluating its return."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nanodreamer import envs
from nanodreamer.agent import AgentModel, sample_action
from nanodreamer.data import EpisodeStore
from nanodreamer.data.collect import random_policy
from nanodreamer.envs.car_racing import tiles_visited
from nanodreamer.errors import UserError
from nanodreamer.eval.metrics import mean_interval, seeded
from nanodreamer.eval.pictures import save_video
from nanodreamer.runs import load_agent, load_tokenizer, read_agent_run
from nanodreamer.tokenizer import Tokenizer, frames_from_uint8


class AgentStream:
    """A batch of environments' running context (the tokenizer's and the transformer's
    caches): frames enter with the action that led to them, as in imagination."""

    def __init__(self, model: AgentModel, tokenizer: Tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.encoder, self.context = tokenizer.new_cache(), model.dynamics.new_cache()

    @torch.no_grad()
    def observe(self, obs: np.ndarray, action, has_action) -> torch.Tensor:
        """obs (B,T,H,W,C) uint8, the actions (B,T,A) that led to them and whether there was
        one (B,T) -> their agent states h (B,T,D)."""
        frames = frames_from_uint8(torch.as_tensor(obs, device=self.device))
        z = self.tokenizer.encode(frames, self.encoder)
        action = torch.as_tensor(action, device=self.device).float()
        has_action = torch.as_tensor(has_action, device=self.device)
        return self.model.observe(z, action, has_action, self.context)

    @torch.no_grad()
    def prime(self, obs: np.ndarray, action, is_first: np.ndarray, tokenizer_only: int = 0):
        """Start one stream from real frames (T,H,W,C), actions (T,A) and is_first (T,) ->
        the last state (1,D); the first `tokenizer_only` frames only fill the tokenizer's."""
        if tokenizer_only:
            warmup = torch.as_tensor(obs[None, :tokenizer_only], device=self.device)
            self.tokenizer.encode(frames_from_uint8(warmup), self.encoder)
        rest = slice(tokenizer_only, None)
        has_action = ~np.asarray(is_first[rest])
        return self.observe(obs[None, rest], action[None, rest], has_action[None])[:, -1]


class AgentPolicy:
    """Acts from pixels in `num_envs` environments with the policy head. Environments whose
    episodes start at the same call share one `AgentStream`; a new episode leaves its old
    stream (idle rows until every member has left), so contexts never leak between episodes."""

    def __init__(self, run: str | Path, num_envs=1, mode: bool | None = None, device=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.info = load_agent(run, self.device)
        self.tokenizer = load_tokenizer(self.info["tokenizer"], self.device)
        # most likely bins (True) or sampled (False); None: as a packed run records, else sampled
        self.mode = self.info.get("acting") == "greedy" if mode is None else mode
        self.label = str(Path(run).resolve())  # what collection records as the episode's policy
        a = self.model.dynamics.config.action_dim
        self.last_action = torch.zeros(num_envs, a, device=self.device)
        self.groups: dict[int, tuple[AgentStream, np.ndarray]] = {}  # id -> (stream, envs)
        self.member = np.full(num_envs, -1)  # each env's group id

    @torch.no_grad()
    def act(self, obs: np.ndarray, is_first: np.ndarray) -> np.ndarray:
        """obs (N,H,W,C) uint8 of every env, is_first (N,) -> actions (N,A) in [-1, 1]."""
        fresh = np.asarray(is_first, bool) | (self.member < 0)
        if fresh.any():
            new = max(self.groups, default=-1) + 1
            self.groups[new] = (AgentStream(self.model, self.tokenizer), np.flatnonzero(fresh))
            self.member[fresh] = new
            self.last_action[torch.from_numpy(fresh)] = 0
        self.groups = {g: v for g, v in self.groups.items() if (self.member == g).any()}
        has_action = torch.from_numpy(~fresh).to(self.device)
        for group, (stream, members) in self.groups.items():
            rows = torch.from_numpy(members).to(self.device)
            inputs = (obs[members, None], self.last_action[rows, None], has_action[rows, None])
            logits = self.model.heads.policy_logits(stream.observe(*inputs)[:, -1], 1)[:, 0]
            action = sample_action(logits, mode=self.mode)
            mine = torch.from_numpy(self.member[members] == group).to(self.device)
            self.last_action[rows[mine]] = action[mine]
        return self.last_action.cpu().numpy()


# A third word in the seed sequence keeps evaluation seeds apart from collection seeds
# (`episode_seed(seed, n)`, two words); any clash with a dataset's seeds is skipped as well.
EVAL_TAG = 0x5EED


def evaluation_seeds(seed: int, episodes: int, taken=()) -> list[int]:
    """`episodes` env seeds for evaluation, none of them in `taken` (the collection seeds)."""
    taken, seeds, number = set(taken), [], 0
    while len(seeds) < episodes:
        candidate = int(np.random.SeedSequence([seed, number, EVAL_TAG]).generate_state(1)[0])
        if candidate not in taken:
            seeds.append(candidate)
        number += 1
    return seeds


def run_episodes(env_name: str, env_options: dict, policy, seeds: list[int], video=None,
                 desc="episodes", opponents=None) -> tuple[np.ndarray, ...]:  # fmt: skip
    """One episode per seed, in lockstep (the policy acts on every env in one batch) ->
    returns (episodes, cars), env steps and car racing's `tiles_visited` (episodes,).
    `opponents` drives every car but the first; `video`: the first episode, all cars' views."""
    pool = [envs.make(env_name, **env_options) for _ in seeds]
    cars = envs.num_streams(pool[0])
    rivals = np.tile(np.arange(cars) > 0, len(pool))  # streams the opponents drive
    views = np.stack([env.reset(seed=seed)[0] for env, seed in zip(pool, seeds, strict=True)])
    views = views.reshape(len(pool) * cars, *views.shape[-3:])  # (envs*cars, H, W, C)
    is_first = np.ones(len(views), bool)
    total, running, frames = np.zeros((len(pool), cars)), np.ones(len(pool), bool), []
    steps, tiles = np.zeros(len(pool), int), np.full(len(pool), np.nan)
    bar = tqdm(total=len(pool), desc=desc, unit="ep")
    while running.any():
        if video is not None and running[0]:
            frames.append(np.concatenate(list(views[:cars]), axis=1))
        action = policy.act(views, is_first)
        if opponents is not None:
            action[rivals] = opponents.act(views[rivals], is_first[rivals])
        is_first[:] = False
        for i in np.flatnonzero(running):
            act = action[i * cars : (i + 1) * cars].reshape(pool[i].action_space.shape)
            obs, reward, terminated, truncated, _ = pool[i].step(act)
            views[i * cars : (i + 1) * cars] = obs.reshape(cars, *obs.shape[-3:])
            total[i] += np.asarray(reward).reshape(cars)
            steps[i] += 1
            if terminated or truncated:
                running[i], tiles[i] = False, tiles_visited(pool[i])
                bar.update(1)
    bar.close()
    for env in pool:
        env.close()
    if video is not None and frames:
        save_video(video, np.stack(frames), fps=25, scale=2)
    return total, steps, tiles


def evaluate_agent(run, env_name: str, episodes: int, *, seed=0, video=None, mode=None, random=True,
                   max_episode_steps=None, num_cars=None, opponents="self") -> dict:  # fmt: skip
    """The agent's return over full-length episodes on seeds no collection used: mean, std
    and 95% interval half-width (`return_ci95`), beside a random policy on the same seeds.
    Multi-car racing counts every car (`per_car_return_mean`); `opponents="random"` scores
    car 0 against random cars."""
    info = read_agent_run(run)
    manifest = EpisodeStore(info["data"]).manifest
    data_env, options = manifest["env"], dict(manifest["env_options"])
    if env_name != data_env:
        raise UserError(
            f"{run} was trained on {data_env!r}, not {env_name!r}: evaluate it on its own env"
        )
    options.pop("max_episode_steps", None)  # collection may cap episodes; evaluation does not
    if max_episode_steps is not None:
        options["max_episode_steps"] = max_episode_steps
    if num_cars is not None:
        if env_name != "multi-car-racing":
            raise UserError("num_cars is for multi-car-racing only")
        options = options | {"num_cars": num_cars}
    if opponents not in ("self", "random"):
        raise UserError(f"opponents must be 'self' or 'random', got {opponents!r}")
    probe = envs.make(env_name, **options)
    cars, action_dim = envs.num_streams(probe), probe.action_space.shape[-1]
    probe.close()
    policy = AgentPolicy(run, num_envs=cars * episodes, mode=mode)
    random_for = lambda streams: random_policy(env_name, streams, action_dim, seed)  # noqa: E731

    taken = [e.get("seed") for e in manifest["episodes"]] + manifest.get("collection_seeds", [])
    seeds = evaluation_seeds(seed, episodes, taken)
    rivals = random_for((cars - 1) * episodes) if opponents == "random" and cars > 1 else None
    with seeded(seed):  # the policy's sampled actions: the same figures on every call
        returns, steps, tiles = run_episodes(
            env_name, options, policy, seeds, video, "agent", rivals
        )
    scored = returns[:, :1] if rivals is not None else returns
    results = {f"return_{k}": v for k, v in mean_interval(scored).items()}
    results |= {"returns": scored.ravel().tolist(), "episodes": episodes, "seeds": seeds}
    results["frames"] = int(steps.sum()) * options.get("action_repeat", 1)  # env frames stepped
    results["env_options"] = options
    if not np.isnan(tiles).all():  # car racing: the share of the track the episodes covered
        results["tiles_visited_mean"] = float(tiles.mean())
    if cars > 1:
        results["per_car_return_mean"] = returns.mean(0).tolist()
    if random:
        scores, *_ = run_episodes(
            env_name, options, random_for(cars * episodes), seeds, desc="random"
        )
        results |= {f"random_return_{k}": v for k, v in mean_interval(scores).items()}
    return results
