"""Is the world model good enough to learn a policy in? Counterfactual evaluation.

Our environments replay exactly from an episode's seed and its recorded actions, so the true
future under *other* actions is known. For held-out contexts (an episode's frames s..c), the
real env is rebuilt at frame c and M alternative action sequences are applied in it and in the
world model:

- `counterfactual_psnr_h{h}`: model under the alternative actions vs the real env under them;
- `ignore_actions_psnr_h{h}`: the model run with the episode's *recorded* actions vs the same
  alternative real frames: what a model that ignores actions would score;
- `controllability_h{h}`: the difference (dB). A model that follows actions scores clearly
  above 0; one that ignores them about 0.

With an agent (phase 2 heads), the reward model is scored too: per-step predicted vs real
reward on held-out episodes (`reward_mae`, `reward_corr`), returns over windows of H steps
(`window_return_corr`), the same under the alternative actions
(`counterfactual_reward_corr`; `counterfactual_return_corr_within`: how well the model ranks
the alternatives' H-step returns from one state, the mean over contexts of their correlation,
which is what a policy learns from), and the policy's imagined H-step return against its real one
from the same states (`imagined_return`, `real_return_h{H}`, `imagined_real_corr`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanodreamer import envs
from nanodreamer.data import EpisodeStore, split_episodes
from nanodreamer.data.collect import random_policy
from nanodreamer.envs.car_racing import frames_skipped
from nanodreamer.errors import UserError
from nanodreamer.eval.metrics import correlation, psnr, seeded
from nanodreamer.eval.tokenizer import settle_frames
from nanodreamer.tokenizer import frames_from_uint8

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
    """Up to `count` contexts spread over the split's episodes, each followed by `horizon`
    recorded frames; early in episodes (within 200 frames of the settle frames), which keeps
    the env replay short. Deterministic."""
    settle = settle_frames(store)
    episodes = split_episodes(store, split) or split_episodes(store, "all")
    per_episode = max(1, -(-count // len(episodes)))
    contexts = []
    for index in episodes:
        entry, length = store.episodes[index], store.episodes[index]["length"]
        if entry.get("seed") is None or length < context + horizon + 1:
            continue
        first = settle if length >= settle + context + horizon + 1 else 0
        last = min(length - context - horizon - 1, first + 200)
        for s in np.linspace(first, last, per_episode).round().astype(int):
            contexts.append(Context(index, entry["seed"], int(s), int(s) + context - 1))
    if not contexts:
        raise NotReplayable(
            f"{store.path}: no replayable {split} episode has {context + horizon + 1} frames "
            "(episodes need their seed in the manifest and that many frames)"
        )
    return contexts[:count]


def alternative_actions(env_name: str, action_dim: int, horizon: int, randoms: int, seed=0):
    """(M, H, A): each dimension held at -1 and at +1 (car racing: full left, full right,
    brake, full gas), then `randoms` sequences of the env's random data policy."""
    constant = []
    for dim in range(action_dim):
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
        """Reset with `seed` and step the recorded `prefix` (T,A; index 0 is the reset frame's
        zero action): the env is then in the episode's state at frame T-1, whose frame this
        returns."""
        obs, _ = self.env.reset(seed=seed)
        with frames_skipped(self.env):  # only the last frame is read
            for action in prefix[1:-1]:
                self.env.step(action)
        if len(prefix) > 1:
            obs, *_ = self.env.step(prefix[-1])
        return obs

    def branch(self, seed: int, prefix: np.ndarray, actions: np.ndarray) -> dict:
        """`reach`, then `actions` (H,A). Returns the frame the prefix reaches (`start`), the H
        frames and rewards after it, and `alive` (H,): the step happened (False once the
        episode has ended; its frame repeats, its reward is 0)."""
        start, frames, rewards, alive, done = self.reach(seed, prefix), [], [], [], False
        for action in actions:
            if not done:
                obs, reward, terminated, truncated, _ = self.env.step(action)
            frames.append(obs)
            rewards.append(0.0 if done else float(reward))
            alive.append(not done)
            done = done or terminated or truncated
        return {
            "start": start,
            "frames": np.stack(frames),
            "rewards": np.array(rewards),
            "alive": np.array(alive),
        }


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


def _context_batch(store: EpisodeStore, contexts: list[Context], horizon: int) -> dict:
    """Context frames (N,C,H,W,C) uint8, their actions and is_first, and the recorded actions
    of the `horizon` frames after them (N,H,A)."""
    rows = []
    for ctx in contexts:
        ep = store.load(ctx.episode, ("obs", "action", "is_first"))
        window = slice(ctx.start, ctx.end + 1)
        rows.append(
            {
                "obs": ep["obs"][window],
                "action": ep["action"][window],
                "is_first": ep["is_first"][window],
                "future": ep["action"][ctx.end + 1 : ctx.end + 1 + horizon],
            }
        )
    return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}


def _per_horizon(scores: np.ndarray, alive: np.ndarray, name: str) -> dict[str, float]:
    """Mean of scores (..., H) over the steps that happened, at each of HORIZONS."""
    return {
        f"{name}_h{h}": float(scores[..., h - 1][alive[..., h - 1]].mean())
        for h in HORIZONS
        if h <= scores.shape[-1] and alive[..., h - 1].any()
    }


@torch.no_grad()
@seeded(0)
def counterfactual_dynamics(
    world,
    data: str | Path,
    *,
    contexts: int = 32,
    randoms: int = 2,
    context: int | None = None,
    split: str = "val",
) -> dict[str, float]:
    """Counterfactual PSNR, ignore-actions PSNR and controllability per horizon (module doc)."""
    store = EpisodeStore(data)
    horizon = max(HORIZONS)
    context = context or min(8, world.window - 1)
    picked = pick_contexts(store, contexts, context, horizon, split)
    a = world.dynamics.config.action_dim
    alternatives = alternative_actions(store.manifest["env"], a, horizon, randoms)
    real = real_branches(store, picked, alternatives)
    batch = _context_batch(store, picked, horizon)
    n, m, device = len(picked), len(alternatives), world.device
    frames = frames_from_uint8(batch["obs"].to(device))
    has_action = ~batch["is_first"].to(device)

    def imagine(rows, actions):  # -> (rows, H, C, H, W)
        world.reset(frames[rows], batch["action"][rows].to(device), has_action[rows])
        return torch.stack([world.step(actions[:, t].to(device)) for t in range(horizon)], 1)

    every = torch.arange(n).repeat_interleave(m)  # (N*M,): context of each branch
    follow = imagine(every, torch.from_numpy(alternatives).repeat(n, 1, 1))
    follow = follow.unflatten(0, (n, m))
    recorded = imagine(torch.arange(n), batch["future"])[:, None]  # (N,1,H,...)
    truth = frames_from_uint8(torch.from_numpy(real["frames"]).to(device))
    scores = psnr(follow, truth).cpu().numpy()
    ignore = psnr(recorded.expand_as(truth), truth).cpu().numpy()
    results = _per_horizon(scores, real["alive"], "counterfactual_psnr")
    results |= _per_horizon(ignore, real["alive"], "ignore_actions_psnr")
    for h in HORIZONS:
        if f"counterfactual_psnr_h{h}" in results:
            gap = results[f"counterfactual_psnr_h{h}"] - results[f"ignore_actions_psnr_h{h}"]
            results[f"controllability_h{h}"] = gap
    return results | {"counterfactual_contexts": n, "counterfactual_actions": m}


# the agent: reward model and imagined returns ---------------------------------------------------
@torch.no_grad()
def per_step_rewards(model, tokenizer, store: EpisodeStore, episodes: int, split="val") -> dict:
    """Predicted (distance-0 head on h_t) vs real reward[t] on held-out episodes, streamed as
    when acting; also the returns of windows of 16 steps."""
    from nanodreamer.eval.agent import AgentStream

    chosen = (split_episodes(store, split) or split_episodes(store, "all"))[:episodes]
    predicted, real = [], []
    for index in chosen:
        ep = store.load(index, ("obs", "action", "reward", "is_first"))
        stream, states = AgentStream(model, tokenizer), []
        for chunk in range(0, len(ep["obs"]), 64):
            part = slice(chunk, chunk + 64)
            states.append(
                stream.observe(
                    ep["obs"][None, part], ep["action"][None, part], ~ep["is_first"][None, part]
                )
            )
        h = torch.cat(states, 1)[0, 1:]  # frame 0: no transition led to it
        predicted.append(model.heads.twohot.decode(model.heads.reward(h, 1)[:, 0]).cpu().numpy())
        real.append(ep["reward"][1:])
    p, r = np.concatenate(predicted), np.concatenate(real)
    window = max(HORIZONS)
    wp = np.concatenate([_window_sums(x, window) for x in predicted])
    wr = np.concatenate([_window_sums(x, window) for x in real])
    return {
        "reward_mae": float(np.abs(p - r).mean()),
        "reward_corr": correlation(p, r),
        f"window_return_mae_h{window}": float(np.abs(wp - wr).mean()) if len(wp) else np.nan,
        f"window_return_corr_h{window}": correlation(wp, wr),
        "reward_episodes": len(chosen),
    }


def _window_sums(x: np.ndarray, window: int) -> np.ndarray:
    """Sums of consecutive, non-overlapping windows of x (T,)."""
    return x[: len(x) // window * window].reshape(-1, window).sum(1)


@torch.no_grad()
@seeded(0)
def evaluate_control(
    run: str | Path,
    *,
    contexts: int = 8,
    randoms: int = 2,
    episodes: int = 8,
    imagined_samples: int = 4,
    split: str = "val",
) -> dict:
    """Reward-model and imagination metrics of an agent run (module doc), on its dataset's
    held-out episodes."""
    import copy

    from nanodreamer.eval.agent import AgentStream
    from nanodreamer.train.agent import load_agent, rollout_from, transition_rewards
    from nanodreamer.train.tokenizer import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, info = load_agent(run, device)
    tokenizer = load_tokenizer(info["tokenizer"], device)
    store = EpisodeStore(info["data"])
    results = per_step_rewards(model, tokenizer, store, episodes, split)
    horizon = max(HORIZONS)
    context = min(8, model.dynamics.config.window - 1)
    picked = pick_contexts(store, contexts, context, horizon, split)
    a = model.dynamics.config.action_dim
    alternatives = alternative_actions(store.manifest["env"], a, horizon, randoms)
    real = real_branches(store, picked, alternatives)
    replay = Replay(store)
    warm = tokenizer.config.window - 1
    predicted, imagined, real_returns = [], [], []
    for ctx in picked:
        ep = store.load(ctx.episode, ("obs", "action", "is_first"))
        first = max(0, ctx.start - warm)
        rows = slice(first, ctx.end + 1)
        stream = AgentStream(model, tokenizer)
        state = stream.prime(
            ep["obs"][rows], ep["action"][rows], ep["is_first"][rows], ctx.start - first
        )
        branch = []
        for actions in alternatives:
            forced = torch.from_numpy(actions)[None]
            out = rollout_from(
                model, state, copy.deepcopy(stream.context), stream.last, horizon, forced
            )
            branch.append(transition_rewards(model.heads, out["states"])[0].cpu().numpy())
        predicted.append(np.stack(branch))
        returns = []
        for _ in range(imagined_samples):
            out = rollout_from(model, state, copy.deepcopy(stream.context), stream.last, horizon)
            reward = transition_rewards(model.heads, out["states"])
            cont = torch.sigmoid(model.heads.cont(out["states"][:, 1:], 1)[:, :, 0, 0].float())
            alive = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)
            returns.append((reward * alive).sum().item())
        imagined.append(float(np.mean(returns)))
        real_returns.append(_real_policy_return(model, stream, state, replay, ctx, ep, horizon))
    replay.env.close()
    predicted = np.stack(predicted)  # (N,M,H)
    alive = real["alive"]
    imagined_h, real_h = (predicted * alive).sum(-1), real["rewards"].sum(-1)  # (N,M) returns
    within = [correlation(i, r) for i, r in zip(imagined_h, real_h, strict=True)]
    within = [c for c in within if np.isfinite(c)]  # nan where the real returns tie
    results |= {
        "counterfactual_reward_mae": float(np.abs(predicted - real["rewards"])[alive].mean()),
        "counterfactual_reward_corr": correlation(predicted[alive], real["rewards"][alive]),
        "counterfactual_return_corr": correlation(imagined_h, real_h),
        "counterfactual_return_corr_within": float(np.mean(within)) if within else float("nan"),
        "imagined_return": float(np.mean(imagined)),
        f"real_return_h{horizon}": float(np.mean(real_returns)),
        "imagined_real_corr": correlation(imagined, real_returns),
        "control_contexts": len(picked),
    }
    return results


def control_figures(run: str | Path) -> dict:
    """`evaluate_control`, or {"control": "skipped: why"} for a dataset that cannot be
    replayed (an env we cannot rebuild, a multi-car race)."""
    try:
        return evaluate_control(run)
    except NotReplayable as err:
        return {"control": f"skipped: {err}"}


def _real_policy_return(model, stream, state, replay: Replay, ctx: Context, ep, horizon) -> float:
    """The policy's return over `horizon` real steps from the context's end, acting through
    the primed `stream` (advanced in place)."""
    from nanodreamer.agent import sample_action

    replay.reach(ctx.seed, ep["action"][: ctx.end + 1])
    total = 0.0
    for _ in range(horizon):
        action = sample_action(model.heads.policy_logits(state, 1)[:, 0])
        obs, reward, terminated, truncated, _ = replay.env.step(action[0].cpu().numpy())
        total += float(reward)
        if terminated or truncated:
            break
        state = stream.observe(obs[None, None], action[:, None], [[True]])[:, -1]
    return total
