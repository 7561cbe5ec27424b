"""The GPU path in one command: correctness on the device, speed, memory, MFU, and a short demo.

    python bench/gpu_check.py [--update-results]     # on a GPU: at most ~8 minutes
    python bench/gpu_check.py --device cpu --smoke   # every step's code path, tiny sizes

Each step is guarded: one that fails records its error and the others still run. The last
thing printed is a table; `--out` (default bench/gpu_check.json) holds every figure with the
device's name, and `--update-results` appends a dated section to bench/RESULTS.md.

Tolerances of the correctness step (fp32 on the CPU against bf16 autocast on the device, the
same weights and inputs): losses within 3% (relative), the two-hot decode of bf16 logits
within 2% of (1 + |value|), one generated frame's latents within 0.05 RMS; cached and
uncached generation on the device agree within 1e-3 (fp32).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, commit, machine, matmul_peak
from dynamics import generation_fps, train_step
from tokenizer import step_time

from nanodreamer.dynamics import DYNAMICS_PRESETS, Dynamics, denoise, draw_noise
from nanodreamer.dynamics import shortcut_forcing_loss as dynamics_loss
from nanodreamer.nn.distributions import TwoHot
from nanodreamer.tokenizer import TOKENIZER_PRESETS, Tokenizer
from nanodreamer.world import WorldModel

TOLERANCE = {"loss": 0.03, "twohot": 0.02, "frame_rms": 0.05, "cache": 1e-3}


def _small_models():
    torch.manual_seed(0)
    tokenizer = Tokenizer(replace(TOKENIZER_PRESETS["tiny"], mask_max=0.0))  # no random masks
    t = tokenizer.config
    config = replace(DYNAMICS_PRESETS["tiny"], n_latents=t.n_latents, latent_dim=t.latent_dim)
    return tokenizer.eval(), Dynamics(config).eval()


def correctness(device: str, smoke: bool) -> dict:
    """fp32 on the CPU vs bf16 autocast on `device`: tokenizer loss, dynamics loss, two-hot
    decode, one generated frame."""
    tokenizer, dynamics = _small_models()
    c = dynamics.config
    torch.manual_seed(1)
    frames = torch.rand(2, 4, 3, 96, 96)
    z1 = torch.rand(2, 8, c.n_latents, c.latent_dim) * 2 - 1
    action, ones = torch.rand(2, 8, c.action_dim) * 2 - 1, torch.ones(2, 8, dtype=torch.bool)
    noise = draw_noise(c, z1)
    logits, frame_noise = torch.randn(64, 63), torch.randn(2, c.n_latents, c.latent_dim)

    def run(dev: str, amp: bool) -> dict:
        move = lambda x: x.to(dev)  # noqa: E731
        dtype = torch.bfloat16 if amp else torch.float32
        tok, dyn = tokenizer.to(dev), dynamics.to(dev)
        with torch.no_grad(), torch.autocast(dev, torch.bfloat16, enabled=amp):
            n = {k: move(v) for k, v in noise.items()}
            out = {
                "tokenizer_loss": tok.loss(move(frames))[1]["mse"].float().item(),
                "dynamics_loss": dynamics_loss(
                    dyn, move(z1), move(action), move(ones), move(ones), noise=n
                )[0].item(),
                "twohot": TwoHot(63).decode(move(logits).to(dtype)).cpu(),  # bf16 head output
                "frame": denoise(
                    dyn, move(frame_noise), move(action[:, 0]), move(ones[:, 0]), 4, None
                )
                .float()
                .cpu(),
            }
        return out

    ref, dev = run("cpu", False), run(device, True)
    rel = lambda a, b: abs(a - b) / max(abs(a), 1e-8)  # noqa: E731
    figures = {
        "tokenizer_loss_rel": rel(ref["tokenizer_loss"], dev["tokenizer_loss"]),
        "dynamics_loss_rel": rel(ref["dynamics_loss"], dev["dynamics_loss"]),
        "twohot_err": ((ref["twohot"] - dev["twohot"]).abs() / (1 + ref["twohot"].abs()))
        .max()
        .item(),
        "frame_rms": (ref["frame"] - dev["frame"]).pow(2).mean().sqrt().item(),
    }
    figures["ok"] = (
        figures["tokenizer_loss_rel"] < TOLERANCE["loss"]
        and figures["dynamics_loss_rel"] < TOLERANCE["loss"]
        and figures["twohot_err"] < TOLERANCE["twohot"]
        and figures["frame_rms"] < TOLERANCE["frame_rms"]
    )
    return figures


def cache_equivalence(device: str, smoke: bool) -> dict:
    """Generation with the key/value cache equals recomputing the whole history, on `device`."""
    tokenizer, dynamics = _small_models()
    tokenizer, dynamics = tokenizer.to(device), dynamics.to(device)
    context = torch.rand(2, 3, 3, 96, 96, device=device)
    actions = torch.rand(2, 3, dynamics.config.action_dim, device=device) * 2 - 1
    future = torch.rand(2, 20, dynamics.config.action_dim, device=device) * 2 - 1
    videos = []
    for use_cache in (True, False):
        generator = torch.Generator(device).manual_seed(0)
        world = WorldModel(tokenizer, dynamics, use_cache=use_cache, generator=generator)
        videos.append(world.imagine(context, actions, future))
    diff = (videos[0] - videos[1]).abs().max().item()
    return {"max_abs_diff": diff, "ok": diff < TOLERANCE["cache"]}


def sdpa_kernels(device: str, smoke: bool) -> dict:
    """Which SDPA kernel each kind of attention call can take (in PyTorch's order of
    preference), with the `base` dynamics model's shapes, forward and backward in bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.MATH,
    ]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    heads, head_dim, s, t = 8, 64, 71, 16  # base: 64 latents + action, shortcut, 4 registers + 1
    space = dict(shape=(2 * t, heads, s, head_dim), mask=True, causal=False)
    time_ = dict(shape=(2 * s, heads, t, head_dim), mask=False, causal=True)
    out = {}
    for name, call in (("space (learned bias)", space), ("time (causal)", time_)):
        q, k, v = (
            torch.randn(*call["shape"], device=device, dtype=dtype, requires_grad=True)
            for _ in range(3)
        )
        bias = torch.randn(heads, s, s, device=device, dtype=dtype, requires_grad=True)
        taken = "none"
        for backend in backends:
            try:
                with sdpa_kernel(backend):
                    y = F.scaled_dot_product_attention(
                        q, k, v, attn_mask=bias if call["mask"] else None, is_causal=call["causal"]
                    )
                    y.sum().backward()
                taken = backend.name.lower()
                break
            except RuntimeError:
                continue
        out[name] = taken
    out["ok"] = "none" not in out.values()
    return out


def training_speed(device: str, smoke: bool) -> dict:
    """Tokenizer and dynamics training steps (bf16 on CUDA), eager and compiled: step time,
    peak memory, MFU against a matmul measured in this run."""
    preset = "tiny" if smoke else "base"
    tok_batch, dyn_batch, steps = (2, 1, 1) if smoke else (16, 16, 5)
    peak = matmul_peak(device)
    out = {"preset": preset, "matmul_peak_tflops": peak / 1e12}
    for compiled in (False, True):
        tag = "compiled" if compiled else "eager"
        rows = {
            "tokenizer": lambda: step_time(preset, tok_batch, 8, steps, device, compiled),  # noqa: B023
            "dynamics": lambda: train_step(preset, dyn_batch, steps, device, compiled),  # noqa: B023
        }
        for model, run in rows.items():
            try:
                r = run()
                out[f"{model}_{tag}"] = {
                    "batch": f"{tok_batch if model == 'tokenizer' else dyn_batch} x "
                    f"{8 if model == 'tokenizer' else 16}",
                    "step_s": r["seconds"],
                    "memory_gib": r["memory"],
                    "mfu": r["flops"] / peak,
                }
            except Exception as err:  # compile may fail where eager works: keep the rest
                out[f"{model}_{tag}"] = {"error": f"{type(err).__name__}: {err}"[:300]}
            if device == "cuda":
                torch.cuda.empty_cache()
    out["ok"] = all("error" not in v for k, v in out.items() if k.endswith("_eager"))
    return out


@torch.no_grad()
def generation_speed(device: str, smoke: bool) -> dict:
    """Interactive frames/s (batch 1, KV cache, decoded) and imagined frames/s at batch 64
    (latents fed back through the cache: the imagination-training regime), K = 4."""
    preset = "tiny" if smoke else "base"
    frames = 4 if smoke else 32
    with torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
        interactive = generation_fps(preset, frames, device, use_cache=True, decode=True)
        tokenizer = Tokenizer(TOKENIZER_PRESETS[preset]).to(device)
        t = tokenizer.config
        config = replace(DYNAMICS_PRESETS[preset], n_latents=t.n_latents, latent_dim=t.latent_dim)
        world = WorldModel(tokenizer, Dynamics(config).to(device))
        batch = 64
        world.reset(torch.zeros(batch, 0, 3, 96, 96, device=device), torch.zeros(batch, 0, 2))
        action = torch.zeros(batch, config.action_dim, device=device)
        world.step_latents(action)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(frames):
            world.step_latents(action)
        if device == "cuda":
            torch.cuda.synchronize()
        imagined = batch * frames / (time.perf_counter() - start)
    return {"preset": preset, "interactive_fps": interactive, "imagined_fps_batch64": imagined}


def learning(device: str, smoke: bool) -> dict:
    """`nanodreamer demo --minutes 4` (the small presets on a GPU) finishes and its losses fall;
    smoke: the dot world with a seconds-long budget."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        if smoke:
            from nanodreamer.demo import run_demo

            dot = {"action_repeat": 1, "max_episode_steps": 30}  # short dot episodes, every step
            run_demo(out, minutes=0.02, env="dot", episodes=4, workers=1, env_options=dot)
        else:
            command = [sys.executable, "-m", "nanodreamer", "demo", "--minutes", "4"]
            subprocess.run([*command, "--out", str(out)], check=True)
        log = (out / "tokenizer" / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in log]
        losses = [r["loss"] for r in rows if "loss" in r]
        summary = json.loads((out / "metrics.json").read_text())
    real = summary["final"]["real_env"]
    return {
        "tokenizer_loss_first": losses[0],
        "tokenizer_loss_last": losses[-1],
        "return_mean": real["return_mean"],
        "random_return_mean": real["random_return_mean"],
        "ok": len(losses) < 2 or losses[-1] < losses[0],
    }


CHECKS = {
    "correctness": correctness,
    "cache": cache_equivalence,
    "sdpa": sdpa_kernels,
    "training": training_speed,
    "generation": generation_speed,
    "learning": learning,
}


def table(results: dict) -> str:
    lines = ["| check | status | figures |", "| --- | --- | --- |"]
    for name, r in results["checks"].items():
        status = "error" if "error" in r else ("ok" if r.get("ok", True) else "FAILED")
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items() if k != "ok"}
        lines.append(f"| {name} | {status} | {json.dumps(shown)[:400]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, any device")
    parser.add_argument("--only", nargs="*", choices=list(CHECKS), help="run these checks only")
    parser.add_argument("--out", default=str(Path(__file__).with_name("gpu_check.json")))
    parser.add_argument("--update-results", action="store_true")
    args = parser.parse_args(argv)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    results = {"device": name, "machine": machine(), "commit": commit(), "smoke": args.smoke}
    results["checks"] = {}
    for check, run in CHECKS.items():
        if args.only and check not in args.only:
            continue
        start = time.perf_counter()
        try:
            results["checks"][check] = run(args.device, args.smoke)
        except Exception as err:
            traceback.print_exc()
            results["checks"][check] = {"error": f"{type(err).__name__}: {err}"[:300]}
        results["checks"][check]["seconds"] = time.perf_counter() - start
        print(f"{check}: {results['checks'][check]}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    if args.update_results:
        stamp = datetime.date.today().isoformat()
        section = f"\n## GPU check: {name}, {stamp}\n\n{results['machine']}, commit "
        section += f"{results['commit']}. Command: `python bench/gpu_check.py`.\n\n"
        RESULTS.write_text(RESULTS.read_text().rstrip() + "\n" + section + table(results) + "\n")
    return results


if __name__ == "__main__":
    main()
