"""Side by side with a peer: the PyPI package `dreamer4` against nanodreamer, same machine, same
run, the seed's `base` sizes configured as close as the peer allows.

    python bench/peer.py [--peer-venv .peer-venv] [--steps 2] [--frames 6]

The peer needs torchvision, which imports only beside torch 2.14.1 + torchvision 0.29.1, so it
lives in its own virtual environment (created here on first use: a ~6 GB download). Every
figure is measured in a fresh process (`--measure WHAT`), so peak RSS belongs to that
measurement alone. Written to bench/RESULTS.md, section "Peer comparison".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PEER_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "dreamer4==0.20.2"]
BATCH_TOKENIZER, FRAMES_TOKENIZER = 2, 8  # 96x96 frames
BATCH_DYNAMICS, FRAMES_DYNAMICS = 2, 16  # frames of 64 x 16 latents
TOKENIZER_BUDGET = 0.5  # the `--memory-budget` that meets both targets of issue 6

# How the peer is configured, and where it cannot match our base preset.
PEER_CONFIG = {
    "tokenizer": "VideoTokenizer(dim=256, dim_latent=16, patch_size=8, image_size=96, "
    "num_latent_tokens=64, encoder_depth=6, decoder_depth=6, attn_heads=8, attn_dim_head=32, "
    "time_block_every=2, lpips_loss_weight=0)",
    "dynamics": "DynamicsWorldModel(dim=512, dim_latent=16, num_latent_tokens=64, "
    "num_spatial_tokens=64, depth=16, attn_heads=8, attn_dim_head=64, time_block_every=4, "
    "num_register_tokens=4, max_steps=32, num_continuous_actions=2, predict_terminals=False), "
    "trained on latents",
}
DIFFERENCES = [
    "Attention: ours uses grouped-query attention in dynamics (8 query / 2 key-value heads), "
    "the peer full multi-head attention.",
    "Optimiser: AdamW for both, over the parameters the step trains (the peer's own trainer "
    "defaults to Adam-atan2). The peer's model also holds idle heads (a 90M-parameter "
    "multi-token reward head among them: 270M parameters in all against its 62M-parameter "
    "transformer); they take memory but no optimizer state here.",
    "Dynamics: the peer's forward runs with `add_autoregressive_action_loss=False` (world-model "
    "phase only, like ours; with it on, dreamer4 0.20.2 fails against the "
    "discrete-continuous-embed-readout version pip resolves). Its agent token and other default "
    "extras stay in; reward and terminal heads are idle without reward inputs. LPIPS is off for "
    "both tokenizers.",
    "Peak memory is the peak RSS of a fresh process per figure (imports included: the peer's "
    "torch 2.14.1 + torchvision CUDA build loads more libraries than our CPU build).",
]


# --- measurements, each run in its own process --------------------------------------------------
def timed(step, steps: int) -> float:
    step()  # warm-up: one-off costs
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def training_step(model, loss_fn, steps: int) -> float:
    loss_fn().backward()  # which parameters does this step train? Only those go to AdamW
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.grad is not None], 1e-4)

    def step():
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed(step, steps)


def peer_tokenizer(steps: int, frames: int) -> float:
    from dreamer4 import VideoTokenizer

    model = VideoTokenizer(
        dim=256,
        dim_latent=16,
        patch_size=8,
        image_height=96,
        image_width=96,
        num_latent_tokens=64,
        encoder_depth=6,
        decoder_depth=6,
        attn_heads=8,
        attn_dim_head=32,
        time_block_every=2,
        lpips_loss_weight=0.0,
    )
    video = torch.rand(BATCH_TOKENIZER, 3, FRAMES_TOKENIZER, 96, 96)  # (b, c, t, h, w)
    return training_step(model, lambda: model(video), steps)


def peer_dynamics_model():
    from dreamer4 import DynamicsWorldModel

    return DynamicsWorldModel(
        dim=512,
        dim_latent=16,
        num_latent_tokens=64,
        num_spatial_tokens=64,
        depth=16,
        attn_heads=8,
        attn_dim_head=64,
        time_block_every=4,
        num_register_tokens=4,
        max_steps=32,
        num_continuous_actions=2,
        predict_terminals=False,
    )


def peer_dynamics(steps: int, frames: int) -> float:
    model = peer_dynamics_model()
    latents = torch.rand(BATCH_DYNAMICS, FRAMES_DYNAMICS, 64, 16) * 2 - 1
    actions = torch.rand(BATCH_DYNAMICS, FRAMES_DYNAMICS, 2) * 2 - 1

    def loss():  # dynamics only, like our phase 1b: the peer's BC head stays off
        return model(
            latents=latents, continuous_actions=actions, add_autoregressive_action_loss=False
        )

    return training_step(model, loss, steps)


@torch.no_grad()
def peer_generation(steps: int, frames: int) -> float:
    model = peer_dynamics_model().eval()
    model.generate(1, num_steps=4, batch_size=1, return_decoded_video=False)  # warm-up
    start = time.perf_counter()
    model.generate(frames, num_steps=4, batch_size=1, return_decoded_video=False)
    return (time.perf_counter() - start) / frames


def ours_tokenizer(steps: int, frames: int, compiled=False, checkpointing="none", budget=1.0):
    from dataclasses import replace

    import torch._functorch.config as compile_config

    from nanodreamer.tokenizer import TOKENIZER_PRESETS, Tokenizer

    model = Tokenizer(replace(TOKENIZER_PRESETS["base"], window=FRAMES_TOKENIZER))
    model.encoder.checkpointing = model.decoder.checkpointing = checkpointing
    video = torch.rand(BATCH_TOKENIZER, FRAMES_TOKENIZER, 3, 96, 96)  # (b, t, c, h, w)
    loss = lambda: model.loss(video)[0]  # noqa: E731
    if compiled:  # `--compile [--memory-budget B]`; the first call compiles (~45 s on 2 cores)
        compile_config.activation_memory_budget = budget
        loss = torch.compile(loss)
        loss()
    return training_step(model, loss, steps)


def ours_dynamics_model():
    from nanodreamer.dynamics import DYNAMICS_PRESETS, Dynamics

    return Dynamics(DYNAMICS_PRESETS["base"])


def ours_dynamics(steps: int, frames: int, checkpointing: str = "none") -> float:
    from nanodreamer.dynamics import shortcut_forcing_loss

    model = ours_dynamics_model()
    model.transformer.checkpointing = checkpointing  # `--checkpointing MODE` in training
    b, t = BATCH_DYNAMICS, FRAMES_DYNAMICS
    latents = torch.rand(b, t, 64, 16) * 2 - 1
    actions = torch.rand(b, t, 2) * 2 - 1
    ones = torch.ones(b, t, dtype=torch.bool)
    return training_step(
        model, lambda: shortcut_forcing_loss(model, latents, actions, ones, ones)[0], steps
    )


@torch.no_grad()
def ours_generation(steps: int, frames: int) -> float:
    """WorldModel.step_latents (no decode, like the peer's latent generation), KV cache on."""
    from nanodreamer.tokenizer import TOKENIZER_PRESETS, Tokenizer
    from nanodreamer.world import WorldModel

    world = WorldModel(Tokenizer(TOKENIZER_PRESETS["base"]), ours_dynamics_model().eval(), steps=4)
    world.reset(torch.zeros(1, 0, 3, 96, 96), torch.zeros(1, 0, 2))
    action = torch.zeros(1, 2)
    world.step_latents(action)  # warm-up
    start = time.perf_counter()
    for _ in range(frames):
        world.step_latents(action)
    return (time.perf_counter() - start) / frames


MEASURES = {
    f"{who}_{what}": globals()[f"{who}_{what}"]
    for who in ("ours", "peer")
    for what in ("tokenizer", "dynamics", "generation")
} | {
    "ours_tokenizer_compiled": partial(ours_tokenizer, compiled=True),
    "ours_tokenizer_budget": partial(ours_tokenizer, compiled=True, budget=TOKENIZER_BUDGET),
    "ours_tokenizer_full": partial(ours_tokenizer, compiled=True, checkpointing="full"),
    "ours_dynamics_selective": partial(ours_dynamics, checkpointing="selective"),
    "ours_dynamics_full": partial(ours_dynamics, checkpointing="full"),
}


def measure(what: str, steps: int, frames: int) -> None:
    import resource

    torch.manual_seed(0)
    seconds = MEASURES[what](steps, frames)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": seconds, "rss_gib": rss, "torch": torch.__version__}))


# --- orchestration ------------------------------------------------------------------------------
def ensure_peer(venv: Path) -> Path:
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import dreamer4, torchvision"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing the peer into {venv} (torch 2.14.1 + torchvision 0.29.1, ~6 GB)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def run_measure(python: Path, what: str, steps: int, frames: int) -> dict:
    command = [str(python), __file__, "--measure", what, "--steps", str(steps)]
    command += ["--frames", str(frames)]
    env = os.environ | {"PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(what, result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer-venv", type=Path, default=ROOT / ".peer-venv")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps")
    parser.add_argument("--frames", type=int, default=6, help="timed generated frames")
    parser.add_argument("--measure", choices=sorted(MEASURES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args.steps, args.frames)
    sys.path.insert(0, str(Path(__file__).parent))
    from common import commit, machine, update_results

    peer_python = ensure_peer(args.peer_venv)
    r = {
        what: run_measure(peer_python if what.startswith("peer") else Path(sys.executable), what,
                          args.steps, args.frames)
        for what in MEASURES
    }  # fmt: skip
    rows = []
    for ours, peer, label in (
        ("ours_tokenizer", "peer_tokenizer",
         f"tokenizer step, batch {BATCH_TOKENIZER} x {FRAMES_TOKENIZER} frames"),
        ("ours_tokenizer_compiled", "peer_tokenizer", "same, ours `--compile`"),
        ("ours_tokenizer_budget", "peer_tokenizer",
         f"same, ours `--compile --memory-budget {TOKENIZER_BUDGET}`"),
        ("ours_tokenizer_full", "peer_tokenizer", "same, ours `--compile --checkpointing full`"),
        ("ours_dynamics", "peer_dynamics",
         f"dynamics step, batch {BATCH_DYNAMICS} x {FRAMES_DYNAMICS} frames"),
        ("ours_dynamics_selective", "peer_dynamics", "same, ours `--checkpointing selective`"),
        ("ours_dynamics_full", "peer_dynamics", "same, ours `--checkpointing full`"),
    ):  # fmt: skip
        ours, peer = r[ours], r[peer]
        rows.append(
            f"| {label} | {ours['seconds']:.2f} s, {ours['rss_gib']:.2f} GiB | "
            f"{peer['seconds']:.2f} s, {peer['rss_gib']:.2f} GiB | "
            f"{peer['seconds'] / ours['seconds']:.1f}x faster, "
            f"{ours['rss_gib'] / peer['rss_gib']:.2f}x the memory |"
        )
    ours, peer = r["ours_generation"], r["peer_generation"]
    rows.append(
        f"| generation, K = 4, batch 1, KV cache, latents | {1 / ours['seconds']:.2f} frames/s | "
        f"{1 / peer['seconds']:.2f} frames/s | {peer['seconds'] / ours['seconds']:.1f}x faster |"
    )
    body = "\n".join(
        [
            f"Machine: {machine()} (ours); the peer ran with torch {peer['torch']} in its own "
            f"venv, same machine, same run. Commit {commit()}. fp32, every figure in a fresh "
            "process.",
            f"Command: `python bench/peer.py --steps {args.steps} --frames {args.frames}` "
            f"(training: mean of {args.steps} AdamW steps after a warm-up step; generation: "
            f"mean over {args.frames} frames after a warm-up frame).",
            "",
            "| `base` sizes | nanodreamer | dreamer4 0.20.2 (PyPI) | ratio |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
            "Peer configuration:",
            "",
            *[f"- {name}: `{config}`" for name, config in PEER_CONFIG.items()],
            "",
            "Differences that remain:",
            "",
            *[f"- {d}" for d in DIFFERENCES],
        ]
    )
    update_results("Peer comparison", body)


if __name__ == "__main__":
    main()
