"""Tokenizer training step: time, frames/s and peak memory at the tiny and base presets.

    python bench/tokenizer.py [--steps 3] [--device cpu|cuda]

Peak memory is CUDA max-allocated on a GPU, peak RSS of this process on the CPU (the tiny
preset runs first, so its RSS figure is a lower bound for base's)."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from common import commit, machine, matmul_peak, peak_rss_gib, step_flops, update_results

from nanodreamer.tokenizer import TOKENIZER_PRESETS, Tokenizer

SETTINGS = {"tiny": (16, 4), "base": (2, 8)}  # batch x frames


def step_time(
    preset: str, batch: int, frames: int, steps: int, device: str, compile: bool = False
) -> dict:
    torch.manual_seed(0)
    model = Tokenizer(replace(TOKENIZER_PRESETS[preset], window=frames)).to(device)
    loss_fn = torch.compile(model.loss) if compile else model.loss
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, fused=device == "cuda")
    x = torch.rand(batch, frames, 3, 96, 96, device=device)
    autocast = torch.autocast(device, torch.bfloat16, enabled=device == "cuda")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with autocast:
            loss, _ = loss_fn(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    flops = step_flops(step)  # also the warm-up step, which pays one-off costs
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else peak_rss_gib()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {
        "seconds": seconds,
        "fps": batch * frames / seconds,
        "memory": memory,
        "params": params,
        "flops": flops / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    memory = "CUDA max allocated" if args.device == "cuda" else "peak RSS"
    peak = matmul_peak(args.device)
    rows = []
    for preset, (batch, frames) in SETTINGS.items():
        r = step_time(preset, batch, frames, args.steps, args.device)
        rows.append(
            f"| {preset} | {r['params']:.2f}M | {batch} x {frames} | {r['seconds']:.3f} | "
            f"{r['fps']:.0f} | {r['memory']:.2f} | {r['flops'] / 1e9:.1f} | "
            f"{100 * r['flops'] / peak:.0f}% |"
        )
        print(rows[-1], flush=True)
    precision = "bf16 autocast" if args.device == "cuda" else "fp32"
    body = "\n".join(
        [
            f"Machine: {machine()}, {args.device}, {precision}. Commit {commit()}.",
            f"Command: `python bench/tokenizer.py --steps {args.steps} --device {args.device}` "
            "(fwd + bwd + AdamW step on random 96x96 frames, MAE masking on; mean of "
            f"{args.steps} steps after one warm-up step).",
            "",
            "",
            f"Model FLOPs utilisation: FLOPs counted by torch.utils.flop_counter over measured "
            f"step time, against a measured matmul peak of {peak / 1e9:.0f} GFLOP/s.",
            "",
            f"| preset | params | batch x frames | step s | frames/s | {memory} GiB | "
            "GFLOP/s | MFU |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    update_results(f"Tokenizer training step ({args.device})", body)


if __name__ == "__main__":
    main()
