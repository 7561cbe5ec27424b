"""Dynamics training step (shortcut forcing) and generation frames/s at tiny and base sizes.

    python bench/dynamics.py [--steps 2] [--device cpu|cuda]

Training: batch x 16 frames of the seed's 64x16 latents, the full shortcut loss (bootstrap
passes included). Generation: interactive `WorldModel.step()` with K = 4, batch 1, with and
without the key/value cache, decode excluded and included (tokenizer of the same preset)."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from common import commit, machine, matmul_peak, peak_rss_gib, step_flops, update_results

from nanodreamer.dynamics import DYNAMICS_PRESETS, Dynamics, shortcut_forcing_loss
from nanodreamer.tokenizer import TOKENIZER_PRESETS, Tokenizer
from nanodreamer.world import WorldModel

TRAIN = {"tiny": 16, "base": 2}  # batch of 16-frame sequences


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(preset: str, batch: int, steps: int, device: str, compile: bool = False) -> dict:
    torch.manual_seed(0)
    loss_fn = torch.compile(shortcut_forcing_loss) if compile else shortcut_forcing_loss
    config = replace(DYNAMICS_PRESETS[preset], n_latents=64, latent_dim=16, window=16)
    model = Dynamics(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, fused=device == "cuda")
    z1 = torch.rand(batch, 16, 64, 16, device=device) * 2 - 1
    action = torch.rand(batch, 16, config.action_dim, device=device) * 2 - 1
    ones = torch.ones(batch, 16, dtype=torch.bool, device=device)
    autocast = torch.autocast(device, torch.bfloat16, enabled=device == "cuda")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with autocast:
            loss, _, _ = loss_fn(model, z1, action, ones, ones)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    flops = step_flops(step)  # also the warm-up step, which pays one-off costs
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else peak_rss_gib()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {
        "seconds": seconds,
        "fps": batch * 16 / seconds,
        "memory": memory,
        "params": params,
        "flops": flops / seconds,  # one step's draw of bootstrap sequences; varies per step
    }


@torch.no_grad()
def generation_fps(preset: str, frames: int, device: str, use_cache: bool, decode: bool) -> float:
    torch.manual_seed(0)
    tokenizer = Tokenizer(TOKENIZER_PRESETS[preset]).to(device)
    t = tokenizer.config
    config = replace(DYNAMICS_PRESETS[preset], n_latents=t.n_latents, latent_dim=t.latent_dim)
    world = WorldModel(tokenizer, Dynamics(config).to(device), steps=4, use_cache=use_cache)
    context = torch.rand(1, 4, 3, 96, 96, device=device)
    world.reset(context, torch.zeros(1, 4, config.action_dim, device=device))
    action = torch.zeros(1, config.action_dim, device=device)
    step = world.step if decode else world.step_latents
    step(action)  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(frames):
        step(action)
    sync(device)
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8, help="generated frames per figure")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    memory = "CUDA max allocated" if args.device == "cuda" else "peak RSS"
    peak = matmul_peak(args.device)
    train_rows, gen_rows = [], []
    for preset, batch in TRAIN.items():
        r = train_step(preset, batch, args.steps, args.device)
        train_rows.append(
            f"| {preset} | {r['params']:.2f}M | {batch} x 16 | {r['seconds']:.3f} | "
            f"{r['fps']:.0f} | {r['memory']:.2f} | {r['flops'] / 1e9:.1f} | "
            f"{100 * r['flops'] / peak:.0f}% |"
        )
        print(train_rows[-1], flush=True)
    for preset in ("tiny", "small", "base"):
        figures = [
            generation_fps(preset, args.frames, args.device, cache, decode)
            for cache in (True, False)
            for decode in (False, True)
        ]
        gen_rows.append(f"| {preset} | " + " | ".join(f"{f:.2f}" for f in figures) + " |")
        print(gen_rows[-1], flush=True)
    precision = "bf16 autocast" if args.device == "cuda" else "fp32"
    head = f"Machine: {machine()}, {args.device}, {precision}. Commit {commit()}."
    update_results(
        f"Dynamics training step ({args.device})",
        "\n".join(
            [
                head,
                f"Command: `python bench/dynamics.py --steps {args.steps} --device "
                f"{args.device}` (shortcut forcing incl. bootstrap passes on 25% of sequences, "
                "fwd + bwd + AdamW; 64x16 latents).",
                "",
                "",
                f"MFU against a measured matmul peak of {peak / 1e9:.0f} GFLOP/s (FLOPs counted "
                "by torch.utils.flop_counter for one step, over the mean step time).",
                "",
                f"| preset | params | batch x frames | step s | frames/s | {memory} GiB | "
                "GFLOP/s | MFU |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
                *train_rows,
            ]
        ),
    )
    update_results(
        f"Generation ({args.device})",
        "\n".join(
            [
                head,
                f"Command: same run. `WorldModel.step()` frames/s, K = 4, batch 1, 4 context "
                f"frames, mean over {args.frames} frames; tokenizer and dynamics of the preset.",
                "",
                "| preset | cache, latents | cache, decoded | no cache, latents | "
                "no cache, decoded |",
                "| --- | --- | --- | --- | --- |",
                *gen_rows,
            ]
        ),
    )


if __name__ == "__main__":
    main()
