"""Diagnostic: does a plain next-latent regressor follow the actions on the same latent code?

An MLP reads a frame's last K latents and actions, predicts the next frame's latents (MSE, no
noise), and is scored by the counterfactual replay of `eval dynamics` (controllability: the
real env replayed under other actions). If it follows the actions where the dynamics model
does not, the code holds what control needs and the dynamics training is the limit.
`--unroll U` trains on U-step rollouts of its own predictions (`--detach`: without gradient
through them); `--unroll 1` is teacher forcing. Results: bench/RESULTS.md.

    python bench/latent_regressor.py --data ar4s --tokenizer tok --test ar4s_test --minutes 8
"""

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from nanodreamer.data.latents import encode_dataset
from nanodreamer.data.sampler import split_episodes
from nanodreamer.eval.dynamics import counterfactual_dynamics
from nanodreamer.runs import load_tokenizer


class Regressor(nn.Module):
    """(B,K,L) last K latents (flattened), (B,K+1,A) their actions and the next one -> the
    next latents (B,L), as the last latents plus a change (starts as "copy the last frame")."""

    def __init__(self, k: int, width: int, action_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(k * width + (k + 1) * action_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, width),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return z[:, -1] + self.net(torch.cat([z.flatten(1), a.flatten(1)], 1))


class RegressorWorld:
    """The interface `counterfactual_dynamics` drives (reset, step), over the tokenizer."""

    def __init__(self, model: Regressor, tokenizer, k: int, action_dim: int):
        from types import SimpleNamespace

        self.model, self.tokenizer, self.k = model.eval(), tokenizer, k
        self.window, self.device = k + 6, torch.device("cpu")
        self.dynamics = SimpleNamespace(config=SimpleNamespace(action_dim=action_dim))

    def reset(self, frames, actions, has_action=None):
        self.cache = self.tokenizer.new_cache()
        z = self.tokenizer.encode(frames)  # (B,T,N,Dl)
        self.tokenizer.decode(z, cache=self.cache)
        self.z, self.a = z.flatten(2)[:, -self.k :], actions[:, -self.k :].float()

    def step(self, action):
        nxt = self.model(self.z, torch.cat([self.a, action[:, None].float()], 1))
        self.z = torch.cat([self.z[:, 1:], nxt[:, None]], 1)
        self.a = torch.cat([self.a[:, 1:], action[:, None].float()], 1)
        latents = nxt.view(len(nxt), 1, -1, self.tokenizer.config.latent_dim)
        return self.tokenizer.decode(latents, cache=self.cache)[:, 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--test", required=True, help="held-out dataset (replayable episodes)")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--k", type=int, default=3, help="context frames the regressor reads")
    p.add_argument("--unroll", type=int, default=8)
    p.add_argument("--detach", action="store_true")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    store = encode_dataset(args.data, args.tokenizer)
    episodes = [store.load(i) for i in range(len(store))]
    z_all = [torch.from_numpy(np.asarray(e["latents"], np.float32)).flatten(1) for e in episodes]
    a_all = [torch.from_numpy(e["action"]).float() for e in episodes]
    held_out = set(split_episodes(store.data, "val"))
    train = [i for i in range(len(episodes)) if i not in held_out]
    k, u = args.k, args.unroll
    model = Regressor(k, z_all[0].shape[1], a_all[0].shape[1], args.hidden)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-4)
    end, steps = time.time() + args.minutes * 60, 0
    while time.time() < end:
        rows = [train[i] for i in rng.integers(len(train), size=args.batch_size)]
        windows = [(i, rng.integers(len(z_all[i]) - k - u + 1)) for i in rows]
        z = torch.stack([z_all[i][s : s + k + u] for i, s in windows])  # (B,K+U,L)
        a = torch.stack([a_all[i][s : s + k + u] for i, s in windows])
        history, loss = z[:, :k], 0.0
        for step in range(u):  # each prediction joins the history the next one reads
            pred = model(history, a[:, step : step + k + 1])
            loss = loss + (pred - z[:, k + step]).pow(2).mean() / u
            fed = pred.detach() if args.detach else pred
            history = torch.cat([history[:, 1:], fed[:, None]], 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    tokenizer = load_tokenizer(args.tokenizer)
    world = RegressorWorld(model, tokenizer, k, a_all[0].shape[1])
    with torch.no_grad():
        results = counterfactual_dynamics(world, args.test, split="all", context=8)
    print(json.dumps(results | {"steps": steps, "unroll": u, "detach": args.detach}, indent=1))


if __name__ == "__main__":
    main()
