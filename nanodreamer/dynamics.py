"""Interactive dynamics transformer trained with shortcut forcing (SPEC "Interactive dynamics").

Each frame is a row of tokens: its (noised) latent tokens, one action token, one shortcut token
(embeddings of the signal level tau and the step size d, concatenated), register tokens, and
in phase 2 agent tokens. Within a frame agent tokens read everything and nothing reads them;
across frames attention is causal. The network predicts clean latents (x-prediction).

Notation: tau = signal level (0 noise, 1 clean), d = step size, K = sampling steps,
z1 = clean latents, z0 = Gaussian noise, z_tau = (1 - tau) z0 + tau z1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from nanodreamer.errors import UserError
from nanodreamer.nn.attention import KVCache
from nanodreamer.nn.transformer import AxialTransformer, TokenLayout


@dataclass
class DynamicsConfig:
    n_latents: int = 64  # tokenizer latents per frame
    latent_dim: int = 16
    group: int = 1  # latents per token (paper: 2, turning 512x16 into 256x32)
    action_dim: int = 2
    action_bins: int = 32  # bins per action dimension (discrete: the number of choices)
    dim: int = 512
    depth: int = 16
    heads: int = 8
    kv_heads: int = 2
    time_every: int = 4
    window: int = 16  # frames of context
    registers: int = 4
    agent_tokens: int = 0  # phase 2 adds them
    tasks: int = 1
    mlp_ratio: float = 4.0
    max_steps: int = 32  # K_max: the finest step is d_min = 1 / max_steps
    independent_frac: float = 0.3  # sequences trained as independent images
    bootstrap_frac: float = 0.25  # sequences that get bootstrap (d > d_min) targets
    context_signal: float = 0.9  # signal level of fed-back context frames
    # Share of windows whose second half is fed the model's own rollout (generated with
    # `rollout_steps` shortcut steps, no gradient) instead of the recorded latents, with the
    # recorded latents still the targets: as in imagination, later frames read generated
    # ones, and the model learns to carry the actions' effect through its own errors.
    rollout_frac: float = 0.0
    rollout_steps: int = 2

    @property
    def tokens(self) -> int:
        return self.n_latents // self.group


DYNAMICS_PRESETS = {
    "tiny": DynamicsConfig(dim=128, depth=4, heads=4, time_every=2, registers=2),
    "small": DynamicsConfig(dim=256, depth=8),
    "base": DynamicsConfig(),
}


def fourier(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of scalars x (...) in [0, 1] -> (..., dim)."""
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), dim // 2, device=x.device))
    angles = x.float()[..., None] * freqs * math.pi
    return torch.cat([angles.sin(), angles.cos()], -1)


class Dynamics(nn.Module):
    def __init__(self, config: DynamicsConfig):
        super().__init__()
        c = self.config = config
        if c.n_latents % c.group:
            raise UserError(f"n_latents {c.n_latents} is not a multiple of group {c.group}")
        if c.max_steps & (c.max_steps - 1):
            raise UserError(f"max_steps must be a power of two, got {c.max_steps}")
        groups = [("latents", c.tokens), ("action", 1), ("shortcut", 1), ("registers", c.registers)]
        world = ("latents", "action", "shortcut", "registers")
        reads = {name: world for name in world}
        if c.agent_tokens:
            groups.append(("agents", c.agent_tokens))
            reads["agents"] = (*world, "agents")
        self.layout = TokenLayout(groups=tuple(groups), reads=reads)
        self.latent_in = nn.Linear(c.group * c.latent_dim, c.dim)
        self.latent_pos = nn.Parameter(torch.randn(c.tokens, c.dim) * 0.02)
        self.action_base = nn.Parameter(torch.randn(c.dim) * 0.02)
        self.action_embed = nn.Embedding(c.action_dim * c.action_bins, c.dim)
        self.tau_in = nn.Linear(64, c.dim // 2)
        self.step_embed = nn.Embedding(int(math.log2(c.max_steps)) + 1, c.dim - c.dim // 2)
        self.registers = nn.Parameter(torch.randn(c.registers, c.dim) * 0.02)
        if c.agent_tokens:
            self.task_embed = nn.Embedding(c.tasks, c.dim)
            self.agent_pos = nn.Parameter(torch.randn(c.agent_tokens, c.dim) * 0.02)
        self.transformer = AxialTransformer(
            self.layout, c.dim, c.depth, c.heads, c.kv_heads, c.time_every, c.window, c.mlp_ratio
        )
        self.latent_out = nn.Linear(c.dim, c.group * c.latent_dim)

    # embeddings -------------------------------------------------------------------------------
    def embed_actions(self, action: torch.Tensor, has_action: torch.Tensor) -> torch.Tensor:
        """action (B,T,A) in [-1,1], has_action (B,T) bool -> action tokens (B,T,1,D): each
        dimension's bin embedding, summed onto a learned base (alone when there is no action)."""
        c = self.config
        bins = ((action.float() + 1) / 2 * c.action_bins).floor().clamp(0, c.action_bins - 1).long()
        ids = bins + torch.arange(c.action_dim, device=action.device) * c.action_bins
        summed = self.action_embed(ids).sum(-2) * has_action[..., None].to(self.action_base.dtype)
        return (self.action_base + summed)[:, :, None]

    def embed_shortcut(self, tau: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        """tau (B,T) in [0,1], step_index k (B,T) with d = 2^-k -> shortcut tokens (B,T,1,D)."""
        token = torch.cat([self.tau_in(fourier(tau, 64)), self.step_embed(step_index)], -1)
        return token[:, :, None]

    def tokens(self, z, tau, step_index, action, has_action, task=None) -> torch.Tensor:
        """Assemble the token rows (B,T,S,D) of noised latents z (B,T,N,Dl)."""
        c = self.config
        b, t = z.shape[:2]
        grouped = rearrange(z, "b t (n g) c -> b t n (g c)", g=c.group)
        parts = [
            self.latent_in(grouped) + self.latent_pos,
            self.embed_actions(action, has_action),  # (B,T,1,D)
            self.embed_shortcut(tau, step_index),
            self.registers.expand(b, t, -1, -1),
        ]
        if c.agent_tokens:
            if task is None:
                task = torch.zeros(b, dtype=torch.long, device=z.device)
            elif task.numel() and (task.min() < 0 or task.max() >= c.tasks):
                raise UserError(
                    f"task ids must lie in [0, {c.tasks - 1}], got {task.tolist()}: "
                    f"this model was trained for {c.tasks} task(s)"
                )
            agents = self.agent_pos + self.task_embed(task)[:, None, None]
            parts.append(agents.expand(b, t, -1, -1))
        return torch.cat(parts, 2)

    def forward(self, z, tau, step_index, action, has_action, *, task=None, independent=None,
                cache: KVCache | None = None, update_cache=True):  # fmt: skip
        """Noised latents z (B,T,N,Dl), signal levels tau (B,T), step_index (B,T) long (d =
        2^-k), the action (B,T,A) that led to each frame and has_action (B,T); task (B,) long;
        independent (B,) bool: frames as separate images -> (predicted clean latents
        (B,T,N,Dl), transformer outputs (B,T,S,D))."""
        c = self.config
        x = self.tokens(z, tau, step_index, action, has_action, task)
        h = self.transformer(x, cache=cache, update_cache=update_cache, independent=independent)
        out = self.latent_out(h[:, :, self.layout.slice("latents")])
        return rearrange(out, "b t n (g c) -> b t (n g) c", g=c.group), h

    def new_cache(self) -> KVCache:
        return KVCache()

    def check_actions(self, action: torch.Tensor) -> None:
        a = self.config.action_dim
        if action.shape[-1] != a:
            raise UserError(f"actions must have {a} dimensions, got shape {tuple(action.shape)}")
        if action.numel() and action.abs().max() > 1:
            raise UserError("actions must lie in [-1, 1]: normalise them per dimension")


# shortcut forcing ---------------------------------------------------------------------------------
def draw_noise(config: DynamicsConfig, z1: torch.Tensor) -> dict[str, torch.Tensor]:
    """The random choices of one shortcut-forcing step for clean latents z1 (B,T,N,Dl).

    bootstrap (B,): sequences whose frames draw k uniformly from {0..log2 K_max} (d = 2^-k);
    the others use d_min = 1/K_max only (flow loss, no teacher passes). tau (B,T) is uniform on
    the grid {0, d, ..., 1 - d}. independent (B,): sequences trained as separate images."""
    (b, t), device = z1.shape[:2], z1.device
    k_max = int(math.log2(config.max_steps))
    bootstrap = torch.rand(b, device=device) < config.bootstrap_frac
    k = torch.randint(0, k_max + 1, (b, t), device=device)
    k = torch.where(bootstrap[:, None], k, torch.full_like(k, k_max))
    d = 2.0 ** -k.float()
    return {
        "step_index": k,
        "tau": torch.floor(torch.rand(b, t, device=device) / d) * d,
        "z0": torch.randn_like(z1),
        "bootstrap": bootstrap,
        "independent": torch.rand(b, device=device) < config.independent_frac,
    }


def shortcut_forcing_loss(
    model: Dynamics,
    z1: torch.Tensor,  # (B,T,N,Dl) clean latents
    action: torch.Tensor,  # (B,T,A)
    has_action: torch.Tensor,  # (B,T) bool
    valid: torch.Tensor,  # (B,T) bool, real (not padded) frames
    noise: dict[str, torch.Tensor] | None = None,  # from draw_noise (drawn when None)
    rollout: bool = False,  # feed `rollout_frac` of the windows their own rollout
) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Shortcut forcing with x-prediction (SPEC). Returns (loss, metrics, transformer outputs).

    Frames at d_min: ||z1_hat - z1||^2. Larger steps: the model's velocity must match the
    average of two half steps taken by the model itself without gradient:
    (1 - tau)^2 ||(z1_hat - z_tau) / (1 - tau) - sg(b' + b'') / 2||^2. Every frame is weighted by
    w(tau) = 0.9 tau + 0.1. The two teacher passes run only on the `bootstrap_frac` sequences
    that draw d > d_min; in those passes later frames see earlier bootstrap frames at the half
    step's (consistently labelled) noise level. With `rollout`, the inputs of a share of the
    windows come from `own_rollout` (flow loss only, toward the recorded latents)."""
    c = model.config
    n = draw_noise(c, z1) if noise is None else noise
    k_max = int(math.log2(c.max_steps))
    inputs = z1
    if rollout and c.rollout_frac > 0:
        rows = (torch.rand(z1.shape[0], device=z1.device) < c.rollout_frac) & ~n["independent"]
        if rows.any():
            inputs = z1.clone()
            inputs[rows] = own_rollout(model, z1[rows], action[rows], has_action[rows])
            n = n | {"step_index": torch.where(rows[:, None], k_max, n["step_index"])}
    k, tau, independent = n["step_index"], n["tau"], n["independent"]
    zt = (1 - tau[..., None, None]) * n["z0"] + tau[..., None, None] * inputs
    flow = k == k_max  # (B,T)
    bootstrap = (~flow).any()
    if bootstrap:  # the teachers run first, while no activations are held for the backward
        rows = (~flow).any(1).nonzero().squeeze(1)
        teacher = (x[rows] for x in (zt, tau, k, action, has_action, independent, ~flow))
        target_velocity = _bootstrap_velocity(model, *teacher)
    pred, h = model(zt, tau, k, action, has_action, independent=independent)
    err = (pred.float() - z1.float()).pow(2).mean((2, 3))  # flow error per frame
    if bootstrap:
        velocity = (pred[rows].float() - zt[rows].float()) / (1 - tau[rows])[..., None, None]
        boot_err = (1 - tau[rows]) ** 2 * (velocity - target_velocity).pow(2).mean((2, 3))
        err = err.index_put((rows,), torch.where(flow[rows], err[rows], boot_err))
    weight = (0.9 * tau + 0.1) * valid.float()
    loss = (weight * err).sum() / valid.float().sum().clamp(min=1)
    with torch.no_grad():
        masked = lambda m: (err * m).sum() / m.sum().clamp(min=1)  # noqa: E731 - mean over m
        metrics = {"flow_mse": masked(flow & valid), "bootstrap_mse": masked(~flow & valid)}
    return loss, metrics, h


@torch.no_grad()
def _bootstrap_velocity(model, zt, tau, k, action, has_action, independent, boot):
    """sg(b' + b'') / 2 for the frames in `boot` (B,T); other frames keep their inputs."""
    d = 2.0 ** -k.float()
    half_k = torch.where(boot, k + 1, k)
    p1, _ = model(zt, tau, half_k, action, has_action, independent=independent)
    b1 = (p1.float() - zt) / (1 - tau)[..., None, None]
    z_mid = torch.where(boot[..., None, None], zt + b1 * (d / 2)[..., None, None], zt)
    tau_mid = torch.where(boot, tau + d / 2, tau)
    p2, _ = model(z_mid, tau_mid, half_k, action, has_action, independent=independent)
    b2 = (p2.float() - z_mid) / (1 - tau_mid)[..., None, None]
    return (b1 + b2) / 2


# generation -----------------------------------------------------------------------------------
def check_steps(model: Dynamics, steps: int) -> None:
    if steps < 1 or steps > model.config.max_steps or steps & (steps - 1):
        raise UserError(
            f"sampling steps must be a power of two from 1 to {model.config.max_steps}, got {steps}"
        )


def frame_inputs(z, tau, step_index, action, has_action) -> dict[str, torch.Tensor]:
    """Model inputs for one new frame per sequence: z (B,N,Dl), tau float, step_index int,
    action (B,A), has_action (B,) -> tensors with a time axis of length 1."""
    shape, device = (z.shape[0], 1), z.device
    tau = torch.full(shape, tau, dtype=torch.float32, device=device)
    step_index = torch.full(shape, step_index, dtype=torch.long, device=device)
    inputs = {"z": z[:, None], "action": action[:, None], "has_action": has_action[:, None]}
    return inputs | {"tau": tau, "step_index": step_index}


def predict_new_frame(model: Dynamics, frame: dict, context):
    """Clean-latent prediction (B,N,Dl) for the new frame after `context`: a KVCache of past
    frames (or None), or, to run without a cache, a dict of past frames' inputs (B,T,...)."""
    if isinstance(context, dict):
        inputs = {key: torch.cat([context[key], frame[key]], 1) for key in frame}
        pred, _ = model(**inputs)
    else:
        pred, _ = model(**frame, cache=context, update_cache=False)
    return pred[:, -1]


@torch.no_grad()
def denoise(model: Dynamics, noise, action, has_action, steps: int, context):
    """Generate one frame's latents (B,N,Dl) from noise (B,N,Dl) in `steps` shortcut steps of
    d = 1/steps on the grid tau = 0, d, ..., 1 - d: z <- z + d (z1_hat - z) / (1 - tau)."""
    check_steps(model, steps)
    k, d, z = int(math.log2(steps)), 1.0 / steps, noise
    for i in range(steps):
        frame = frame_inputs(z, i * d, k, action, has_action)
        pred = predict_new_frame(model, frame, context).float()
        z = z + d * (pred - z) / (1 - i * d)
    return z


@torch.no_grad()
def own_rollout(model: Dynamics, z1, action, has_action) -> torch.Tensor:
    """z1 (B,T,N,Dl) with frames T//2.. replaced by the model's rollout from the first half
    under the recorded actions (`rollout_steps` shortcut steps per frame), as imagined."""
    start, cache, out = z1.shape[1] // 2, model.new_cache(), z1.clone()

    def feed_back(rows: slice) -> None:  # frames `rows` of `out` join the context
        z, a, h = out[:, rows], action[:, rows], has_action[:, rows]
        model(**context_inputs(model, z, a, h, torch.randn_like(z)), cache=cache)

    feed_back(slice(0, start))
    for i in range(start, z1.shape[1]):
        noise = torch.randn_like(z1[:, i])
        steps = model.config.rollout_steps
        out[:, i] = denoise(model, noise, action[:, i], has_action[:, i], steps, cache)
        feed_back(slice(i, i + 1))
    return out


def context_inputs(model: Dynamics, z, action, has_action, noise) -> dict[str, torch.Tensor]:
    """Inputs that feed frames z (B,T,N,Dl) back as context, noised to the context signal
    level: (1 - s) noise + s z with s = context_signal, labelled with d_min."""
    s, k_min = model.config.context_signal, int(math.log2(model.config.max_steps))
    tau = torch.full(z.shape[:2], s, device=z.device)
    step_index = torch.full(z.shape[:2], k_min, dtype=torch.long, device=z.device)
    inputs = {"z": (1 - s) * noise + s * z, "tau": tau, "step_index": step_index}
    return inputs | {"action": action, "has_action": has_action}


def latent_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dataset window (`data.WindowDataset` of a latent cache) -> dynamics inputs (frames
    without a known action get the no-action embedding)."""
    return {"z1": batch["latents"].float()} | {
        k: batch[k] for k in ("action", "has_action", "valid")
    }
