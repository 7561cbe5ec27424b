"""Replaying the real environment: our envs replay exactly from an episode's seed and actions,
so the real env can be rebuilt at the end of a held-out context and driven by other actions;
`eval.dynamics` and `eval.control` compare the models against these real branches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nanodreamer import envs
from nanodreamer.data import EpisodeStore
from nanodreamer.data.collect import random_policy
from nanodreamer.data.sampler import spread_windows
from nanodreamer.envs.car_racing import frames_skipped
from nanodreamer.envs.wrappers import bin_centers
from nanodreamer.errors import UserError

HORIZONS = (1, 4, 8, 16)


class NotReplayable(UserError):
    """The dataset's env cannot be rebuilt and replayed (not a Gymnasium env we can make, a
    multi-car race, or no episode long enough with a seed): no counterfactual figures."""


@dataclass
class Context:
    """Frames s..c of a held-out episode (c = s + context - 1), followed by `horizon` more."""

    episode: int
    seed: int
    start: int
    end: int


def pick_contexts(store: EpisodeStore, count: int, context: int, horizon: int, split="val"):
    """Up to `count` contexts of seeded episodes (`spread_windows`), each followed by `horizon`
    recorded frames, within 200 frames of the settle frames (short replays)."""
    length, seeds = context + horizon + 1, [e.get("seed") for e in store.episodes]
    windows = spread_windows(store, length, count, split, span=200)
    contexts = [
        Context(i, seeds[i], s, s + context - 1) for i, s in windows if seeds[i] is not None
    ]
    if not contexts:
        raise NotReplayable(
            f"{store.path}: no replayable {split} episode has {length} frames "
            "(episodes need their seed in the manifest and that many frames)"
        )
    return contexts[:count]


def alternative_actions(
    env_name: str, action_dim: int, horizon: int, randoms: int, seed=0, bins=None
):
    """(M, H, A): each dimension held at -1 and at +1 (car racing: left, right, brake, gas), or
    each discrete choice (`bins`) held, then `randoms` sequences of the random data policy."""
    constant = []
    if bins:  # one discrete dimension: every choice, at its bin's centre
        constant = [np.full((horizon, 1), value) for value in bin_centers(bins[0])]
    for dim in range(action_dim if not bins else 0):
        for value in (-1.0, 1.0):
            action = np.zeros(action_dim, np.float32)
            action[dim] = value
            constant.append(np.broadcast_to(action, (horizon, action_dim)))
    policy = random_policy(env_name, randoms, action_dim, seed)
    noise = [policy.act(None, np.zeros(randoms, bool)) for _ in range(horizon)]
    return np.concatenate([np.stack(constant), np.stack(noise, 1)]).astype(np.float32)


class Replay:
    """Rebuild a real env state from a seed and an action prefix, then branch from it."""

    def __init__(self, store: EpisodeStore):
        manifest = store.manifest
        try:
            self.env = envs.make(manifest["env"], **manifest["env_options"])
        except UserError as err:
            raise NotReplayable(f"cannot rebuild {manifest['env']!r} to replay it: {err}") from None
        if envs.num_streams(self.env) != 1:
            raise NotReplayable("counterfactual evaluation needs a single-car env")

    def reach(self, seed: int, prefix: np.ndarray) -> np.ndarray:
        """Reset with `seed`, step the recorded `prefix` (T,A; index 0 the reset's zero action)
        and return frame T-1."""
        obs, _ = self.env.reset(seed=seed)
        with frames_skipped(self.env):  # only the last frame is read
            for action in prefix[1:-1]:
                self.env.step(action)
        if len(prefix) > 1:
            obs, *_ = self.env.step(prefix[-1])
        return obs

    def branch(self, seed: int, prefix: np.ndarray, actions: np.ndarray) -> dict:
        """`reach` (`start`), then `actions` (H,A): the H frames and rewards, and `alive` (H,),
        False once the episode has ended (its frame repeats, its reward is 0)."""
        start, frames, rewards, alive, done = self.reach(seed, prefix), [], [], [], False
        for action in actions:
            if not done:
                obs, reward, terminated, truncated, _ = self.env.step(action)
            frames.append(obs)
            rewards.append(0.0 if done else float(reward))
            alive.append(not done)
            done = done or terminated or truncated
        arrays = dict(frames=np.stack(frames), rewards=np.array(rewards), alive=np.array(alive))
        return {"start": start} | arrays


def real_branches(store: EpisodeStore, contexts: list[Context], alternatives: np.ndarray):
    """The real env under each alternative after each context: frames (N,M,H,H,W,C) uint8,
    rewards and alive (N,M,H). Refuses an env that does not replay its own episodes."""
    replay = Replay(store)
    out = {"frames": [], "rewards": [], "alive": []}
    for ctx in contexts:
        episode = store.load(ctx.episode, ("obs", "action"))
        prefix = episode["action"][: ctx.end + 1]
        branches = [replay.branch(ctx.seed, prefix, actions) for actions in alternatives]
        if not np.array_equal(branches[0]["start"], episode["obs"][ctx.end]):
            raise UserError(
                f"replaying episode {store.episodes[ctx.episode]['file']} from its seed and "
                "actions does not reproduce its frames: the env is not deterministic"
            )
        for key in out:
            out[key].append(np.stack([b[key] for b in branches]))
    replay.env.close()
    return {k: np.stack(v) for k, v in out.items()}


def branches_after_contexts(
    store: EpisodeStore, count: int, context: int, action_dim: int, randoms: int, split="val"
):
    """Contexts (`pick_contexts`, followed by 16 steps), the alternative actions after them
    (M,16,A) and the real env's branches under each (`real_branches`)."""
    horizon = max(HORIZONS)
    picked = pick_contexts(store, count, context, horizon, split)
    env, bins = store.manifest["env"], store.manifest["action_bins"]
    alternatives = alternative_actions(env, action_dim, horizon, randoms, bins=bins)
    return picked, alternatives, real_branches(store, picked, alternatives)


def context_batch(store: EpisodeStore, contexts: list[Context], horizon: int) -> dict:
    """Context frames (N,C,H,W,C) uint8, their actions and is_first, and the recorded actions
    of the `horizon` frames after them (N,H,A)."""
    rows = []
    for ctx in contexts:
        ep = store.load(ctx.episode, ("obs", "action", "is_first"))
        window = slice(ctx.start, ctx.end + 1)
        rows.append({k: ep[k][window] for k in ep})
        rows[-1]["future"] = ep["action"][ctx.end + 1 : ctx.end + 1 + horizon]
    return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}
