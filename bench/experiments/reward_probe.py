"""Is a step's reward in the tokenizer's code at all? A small MLP reads the latents of the
frame before and the frame itself (z_{t-1}, z_t) and regresses reward[t]; scored by its
correlation on held-out episodes. If it finds the reward where the agent's reward head does
not, the code holds it and phase 2 is the limit. `--agent RUN`: the same probe on that agent
run's frozen features h_t, the input of its reward head: if it finds the reward there, the
head's training is the limit; if not, the features are. Results: bench/log/atari-recipe.md.

    python bench/experiments/reward_probe.py DATA/latents/FINGERPRINT --steps 3000
    python bench/experiments/reward_probe.py DATA/latents/FINGERPRINT --agent runs/agent
"""

import argparse
import json

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from nanodreamer.agent import AgentModel, complete_context
from nanodreamer.data.latents import LatentStore
from nanodreamer.data.sampler import WindowDataset, split_episodes
from nanodreamer.dynamics import latent_batch
from nanodreamer.eval.metrics import correlation
from nanodreamer.runs import load_agent


def pairs(store: LatentStore, episodes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in episodes:
        ep = store.load(i, ("latents", "reward"))
        z = np.asarray(ep["latents"], np.float32).reshape(len(ep["reward"]), -1)
        xs.append(np.concatenate([z[:-1], z[1:]], 1))
        ys.append(ep["reward"][1:])
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)).float()


@torch.no_grad()
def features(store: LatentStore, model: AgentModel, split: str, windows: int):
    """Frozen agent features h_t (N,D) of complete-context frames and their reward[t] (N,)."""
    window = model.dynamics.config.window
    data = WindowDataset(store, 2 * window, split=split, seed=1, labelled_only=True)
    xs, ys = [], []
    for start in range(0, windows, 16):
        batch = default_collate([data[i] for i in range(start, start + 16)])
        h = model.context_features(latent_batch(batch))
        keep = complete_context(batch["is_first"], window) & batch["valid"] & ~batch["is_first"]
        xs.append(h[keep])
        ys.append(batch["reward"][keep].float())
    return torch.cat(xs), torch.cat(ys)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("latents", help="a latent cache folder (DATA/latents/FINGERPRINT)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--agent", help="probe this agent run's features h_t instead")
    p.add_argument("--windows", type=int, default=1600, help="--agent: training windows")
    args = p.parse_args()
    torch.manual_seed(0)
    store = LatentStore(args.latents)
    if args.agent:
        model = load_agent(args.agent)[0]
        x, y = features(store, model, "train", args.windows)
        xv, yv = features(store, model, "val", args.windows // 4)
    else:
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
    print(
        json.dumps(
            {
                "val_reward_corr": correlation(pred, yv.numpy()),
                "train_pairs": len(x),
                "val_pairs": len(xv),
            }
        )
    )


if __name__ == "__main__":
    main()
