"""Is the world model good enough to learn a policy in? The agent's figures on held-out
episodes, against the real env replayed (`eval.replay`): the reward model per step
(`reward_mae`, `reward_corr`), over windows of H steps (`window_return_corr_h{H}`) and under
alternative actions (`counterfactual_reward_corr`; `counterfactual_return_corr_within`: its
ranking of the alternatives' H-step returns from one state, what a policy learns from); the
policy's imagined H-step return against its real one (`imagined_return`, `real_return_h{H}`,
`imagined_real_corr`)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from nanodreamer.agent import continuation, rollout_from, sample_action, transition_rewards
from nanodreamer.data import EpisodeStore, split_episodes
from nanodreamer.eval.agent import AgentStream
from nanodreamer.eval.metrics import correlation, seeded
from nanodreamer.eval.replay import (
    HORIZONS,
    Context,
    NotReplayable,
    Replay,
    branches_after_contexts,
)
from nanodreamer.runs import load_agent, load_tokenizer


@torch.no_grad()
def per_step_rewards(model, tokenizer, store: EpisodeStore, episodes: int, split="val") -> dict:
    """Predicted (distance-0 head on h_t) vs real reward[t] on held-out episodes, streamed as
    when acting; also the returns of windows of 16 steps."""
    chosen = (split_episodes(store, split) or split_episodes(store, "all"))[:episodes]
    predicted, real = [], []
    for index in chosen:
        ep = store.load(index, ("obs", "action", "reward", "is_first"))
        stream, states = AgentStream(model, tokenizer), []
        for chunk in range(0, len(ep["obs"]), 64):
            part = slice(chunk, chunk + 64)
            window = (ep["obs"][part], ep["action"][part], ~ep["is_first"][part])
            states.append(stream.observe(*(x[None] for x in window)))
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
def evaluate_control(run, *, contexts=8, randoms=2, episodes=8, imagined_samples=4, split="val"):
    """Reward-model and imagination metrics of an agent run (module doc)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, info = load_agent(run, device)
    tokenizer = load_tokenizer(info["tokenizer"], device)
    store = EpisodeStore(info["data"])
    results = per_step_rewards(model, tokenizer, store, episodes, split)
    horizon = max(HORIZONS)
    context, a = min(8, model.dynamics.config.window - 1), model.dynamics.config.action_dim
    picked, alternatives, real = branches_after_contexts(
        store, contexts, context, a, randoms, split
    )
    replay = Replay(store)
    warm = tokenizer.config.window - 1
    predicted, imagined, real_returns = [], [], []
    for ctx in picked:
        ep = store.load(ctx.episode, ("obs", "action", "is_first"))
        first = max(0, ctx.start - warm)
        rows, stream = slice(first, ctx.end + 1), AgentStream(model, tokenizer)
        state = stream.prime(*(ep[k][rows] for k in ep), ctx.start - first)
        branch = []
        for actions in alternatives:
            forced = torch.from_numpy(actions)[None]
            out = rollout_from(model, state, copy.deepcopy(stream.context), horizon, forced)
            branch.append(transition_rewards(model.heads, out["states"])[0].cpu().numpy())
        predicted.append(np.stack(branch))
        returns = []
        for _ in range(imagined_samples):
            out = rollout_from(model, state, copy.deepcopy(stream.context), horizon)
            reward = transition_rewards(model.heads, out["states"])
            returns.append((reward * continuation(model.heads, out["states"])[1]).sum().item())
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
    """`evaluate_control`, or {"control": "skipped: why"} for a dataset that cannot be replayed."""
    try:
        return evaluate_control(run)
    except NotReplayable as err:
        return {"control": f"skipped: {err}"}


def _real_policy_return(model, stream, state, replay: Replay, ctx: Context, ep, horizon) -> float:
    """The policy's return over `horizon` real steps from the context's end (`stream` advances)."""
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
