"""Collect episodes with Gymnasium vector environments into an `EpisodeStore`. Each episode is
reset with its own seed, derived from (--seed, episode number) and kept in the manifest: any
episode replays exactly, and appending with the same --seed gives new episodes, not copies."""

from __future__ import annotations

import functools
import time
from contextlib import nullcontext
from typing import Protocol

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from nanodreamer import envs
from nanodreamer.data.store import EpisodeStore


class Policy(Protocol):
    def act(self, obs: np.ndarray, is_first: np.ndarray) -> np.ndarray:
        """obs (N,H,W,C) uint8, is_first (N,) bool (a new episode: forget its context)
        -> actions (N,A) in [-1, 1]."""


class RandomPolicy:
    """Uniform actions in [low, high] per dimension, each held for a random 1..`hold` steps:
    in car racing the car then turns and accelerates instead of jittering in place."""

    def __init__(self, num_envs: int, action_dim: int, hold: int = 8, seed=0, low=-1.0, high=1.0):
        self.rng, self.hold = np.random.default_rng(seed), hold
        self.low = np.broadcast_to(np.asarray(low, np.float32), (action_dim,))
        self.high = np.broadcast_to(np.asarray(high, np.float32), (action_dim,))
        self.action = np.zeros((num_envs, action_dim), np.float32)
        self.left = np.zeros(num_envs, np.int64)

    def act(self, obs: np.ndarray, is_first: np.ndarray) -> np.ndarray:
        self.left[is_first] = 0
        renew = self.left <= 0
        self.action[renew] = self.rng.uniform(self.low, self.high, self.action[renew].shape)
        self.left[renew] = self.rng.integers(1, self.hold + 1, int(renew.sum()))
        self.left -= 1
        return self.action.copy()


def random_policy(env: str, num_envs: int, action_dim: int, seed=0) -> RandomPolicy:
    """The random policy that collects `env`'s data (and is its evaluation baseline)."""
    low, high = envs.RANDOM_ACTION_RANGE.get(env, (-1.0, 1.0))
    # Atari's random scores (0 on the human-normalised scale) are of a fresh action every step
    hold = 1 if envs.atari_id(env) else envs.RANDOM_HOLD.get(env, 8)
    return RandomPolicy(num_envs, action_dim, hold=hold, seed=seed, low=low, high=high)


def episode_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class _Recorder:
    """Builds one episode in the SPEC alignment: index 0 = reset frame, zero action/reward;
    and with `frames`, every frame the env stepped through (`frame_episodes`)."""

    def __init__(self, obs: np.ndarray, action_dim: int):
        self.obs, self.action = [obs], [np.zeros(action_dim, np.float32)]
        self.reward, self.is_terminal, self.frames = [0.0], [False], [obs]

    def add(self, obs, action, reward, terminated) -> None:
        self.obs.append(obs)
        self.action.append(np.asarray(action, np.float32))
        self.reward.append(float(reward))
        self.is_terminal.append(bool(terminated))

    def drop_last(self) -> None:
        """Forget the last step (past a step budget); its stepped frames stay for the tokenizer."""
        for steps in (self.obs, self.action, self.reward, self.is_terminal):
            steps.pop()

    def episode(self) -> dict[str, np.ndarray]:
        reward, is_terminal = np.array(self.reward, np.float32), np.array(self.is_terminal)
        arrays = dict(obs=np.stack(self.obs), action=np.stack(self.action), reward=reward)
        return arrays | {"is_terminal": is_terminal, "is_first": np.arange(len(self.obs)) == 0}

    def frame_episodes(self, repeat: int) -> list[dict[str, np.ndarray]]:
        """Every stepped frame as `repeat` action-free episodes, one per phase of the action
        repeat (frames p, p + repeat, ...): the time step of the data the tokenizer encodes."""
        last, dim, episodes = len(self.frames) - 1, len(self.action[0]), []
        for phase in range(min(repeat, last + 1)):
            obs = np.stack(self.frames[phase::repeat])
            count = len(obs)
            is_terminal = np.zeros(count, bool)
            is_terminal[-1] = self.is_terminal[-1] and (last - phase) % repeat == 0
            zeros = {"action": np.zeros((count, dim), np.float32), "reward": np.zeros(count)}
            episodes.append(
                {"obs": obs, "is_first": np.arange(count) == 0, "is_terminal": is_terminal} | zeros
            )
        return episodes


def collect(env: str, out, episodes: int | None, *, steps=None, workers=1, seed=0,
            policy: Policy | None = None, env_options=None, frames=None,
            progress=True) -> EpisodeStore:  # fmt: skip
    """Append `episodes` episodes of `env` (multi-car: car streams) to the dataset at `out` and
    return it. `steps`: stop after this many agent steps (Atari 100k's budget), keeping the
    running episodes as truncated ones; `episodes` None: no cap. An Atari life loss is a
    terminal step (`envs.atari`). `frames`: also append every stepped frame (all repeats of an
    action) to this action-free dataset, one episode per phase of the repeat, for the tokenizer.
    """
    env_options = env_options or {}
    keep = {"keep_frames": True} if frames is not None else {}
    make_env = functools.partial(envs.make, env, **env_options, **keep)
    probe = make_env()
    cars = envs.num_streams(probe)
    spaces = dict(obs_shape=probe.observation_space.shape[-3:], action_bins=envs.action_bins(probe))
    spaces["action_dim"] = probe.action_space.shape[-1]
    probe.close()
    store = EpisodeStore.create(out, env=env, env_options=env_options, **spaces)
    frame_store = None
    if frames is not None:  # each phase episode steps as the data does: same options
        frame_store = EpisodeStore.create(frames, env=env, env_options=env_options, **spaces)
    if episodes is None and steps is None:
        raise ValueError("collect needs episodes or steps")
    episodes = episodes if episodes is not None else 2**62
    with store, frame_store or nullcontext():
        workers = min(workers, -(-episodes // cars))
        budget = (episodes, steps or 2**62)
        _run(store, frame_store, make_env, budget, workers, cars, seed, policy, progress)
    return EpisodeStore(out)


def _run(store, frame_store, make_env, budget, num_envs, cars, seed, policy, progress):
    """Step `num_envs` envs of `cars` streams each; stream j belongs to env j // cars. Stops
    at `budget` (episodes, agent steps), whichever comes first."""
    episodes, max_steps = budget
    disabled = gym.vector.AutoresetMode.DISABLED
    # spawned workers do not inherit the dataset's lock file; SyncVectorEnv keeps one float
    # reward per env, so a multi-car env (a reward per car) always runs in a worker
    spawn = {"context": "spawn"} if num_envs > 1 or cars > 1 else {}
    vector = gym.vector.AsyncVectorEnv if spawn else gym.vector.SyncVectorEnv
    venv = vector([make_env] * num_envs, autoreset_mode=disabled, **spawn)
    action_dim, streams = store.manifest["action_dim"], num_envs * cars
    obs_shape = tuple(store.manifest["obs_shape"])
    first = len(store)
    label = getattr(policy, "label", "random")
    policy = policy or random_policy(store.manifest["env"], streams, action_dim, (seed, first))
    seeds = [episode_seed(seed, first + k) for k in range(num_envs)]
    started, written, steps, t0 = num_envs, 0, 0, time.perf_counter()
    obs = venv.reset(seed=seeds)[0].reshape(streams, *obs_shape)
    recorders = [_Recorder(o, action_dim) for o in obs]
    is_first = np.ones(streams, bool)
    total = episodes if max_steps >= 2**62 else max_steps
    bar = tqdm(total=total, desc="collect", unit="ep" if total == episodes else "step",
               disable=not progress)  # fmt: skip

    def keep(j: int, i: int, repeat: int) -> None:  # stream j's episode into the dataset
        nonlocal written
        car = {"car": int(j - i * cars)} if cars > 1 else {}
        store.add(recorders[j].episode(), seed=seeds[i], policy=label, **car)
        if frame_store is not None:  # in its episode's train/val split
            split_of = store.episodes[-1]["file"]
            for phase, frames in enumerate(recorders[j].frame_episodes(repeat)):
                frame_store.add(frames, actions=False, seed=seeds[i], phase=phase,
                                split_of=split_of, **car)  # fmt: skip
        written += 1
        bar.update(1 if total == episodes else 0)

    try:
        while written < episodes and steps < max_steps:
            actions = np.clip(policy.act(obs, is_first), -1.0, 1.0).astype(np.float32)
            stepped = venv.step(actions.reshape(venv.action_space.shape))
            obs, reward, terminated, truncated, info = stepped
            obs, reward = obs.reshape(streams, *obs_shape), reward.reshape(streams)
            steps += streams
            if total != episodes:
                bar.update(streams)
            is_first[:] = False
            ends = terminated | np.asarray(info.get("life_loss", False), bool)
            for j in range(streams):
                recorders[j].add(obs[j], actions[j], reward[j], ends[j // cars])
            repeat = info["frames"].shape[1] if frame_store is not None else 1
            if frame_store is not None:  # (envs, repeat, cars, H, W, C)
                stepped = info["frames"].reshape(num_envs, -1, cars, *obs_shape)
                for j in range(streams):
                    count = info["frame_count"][j // cars]
                    recorders[j].frames.extend(stepped[j // cars, :count, j % cars])
            done = terminated | truncated
            if steps >= max_steps:  # the budget is spent: keep what is running, truncated
                for j in range(streams - (steps - max_steps), streams):
                    recorders[j].drop_last()  # the steps past it
                steps, done[:] = max_steps, True
            if not done.any():
                continue
            reset_seeds = [None] * num_envs
            for i in np.flatnonzero(done):
                for j in range(i * cars, (i + 1) * cars):
                    if seeds[i] is not None and written < episodes:
                        keep(j, i, repeat)
                seeds[i] = reset_seeds[i] = None
                if started < -(-episodes // cars):
                    seeds[i] = reset_seeds[i] = episode_seed(seed, first + started)
                    started += 1
            bar.set_postfix(steps_per_s=f"{steps / (time.perf_counter() - t0):.0f}")
            if written >= episodes or steps >= max_steps:
                break
            reset_obs, _ = venv.reset(seed=reset_seeds, options={"reset_mask": done})
            restarted = np.repeat(done, cars)  # the streams of the envs just reset
            obs[restarted] = reset_obs.reshape(streams, *obs_shape)[restarted]
            for j in np.flatnonzero(restarted):
                recorders[j] = _Recorder(obs[j], action_dim)
            is_first[restarted] = True
    finally:
        bar.close()
        venv.close()
