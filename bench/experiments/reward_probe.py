"""Is a step's reward in the tokenizer's code at all? A small MLP reads the latents of the
frame before and the frame itself (z_{t-1}, z_t) and regresses reward[t]; scored by its
correlation on held-out episodes. If it finds the reward where the agent's reward head does
not, the code holds it and the head's training is the limit. Results: bench/log/atari-recipe.md.

    python bench/experiments/reward_probe.py runs/boxing-ar1/data/latents/* --steps 3000
"""

import argparse
import json

import numpy as np
import torch
from torch import nn

from nanodreamer.data.latents import LatentStore
from nanodreamer.data.sampler import split_episodes


def pairs(store: LatentStore, episodes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in episodes:
        ep = store.load(i, ("latents", "reward"))
        z = np.asarray(ep["latents"], np.float32).reshape(len(ep["reward"]), -1)
        xs.append(np.concatenate([z[:-1], z[1:]], 1))
        ys.append(ep["reward"][1:])
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)).float()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("latents", help="a latent cache folder (DATA/latents/FINGERPRINT)")
    p.add_argument("--steps", type=int, default=3000)
    args = p.parse_args()
    torch.manual_seed(0)
    store = LatentStore(args.latents)
    x, y = pairs(store, split_episodes(store, "train"))
    xv, yv = pairs(store, split_episodes(store, "val"))
    mean, std = x.mean(0), x.std(0) + 1e-6
    net = nn.Sequential(nn.Linear(x.shape[1], 512), nn.SiLU(), nn.Linear(512, 512), nn.SiLU(),
                        nn.Linear(512, 1))  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(args.steps):
        i = torch.randint(len(x), (512,))
        loss = (net((x[i] - mean) / std)[:, 0] - y[i]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = net((xv - mean) / std)[:, 0].numpy()
    corr = float(np.corrcoef(pred, yv.numpy())[0, 1])
    print(json.dumps({"val_reward_corr": corr, "train_pairs": len(x), "val_pairs": len(xv)}))


if __name__ == "__main__":
    main()
