"""Phase 1b: train the dynamics model with shortcut forcing on cached tokenizer latents."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from nanodreamer.data.latents import LatentStore, encode_dataset
from nanodreamer.dynamics import Dynamics, DynamicsConfig, latent_batch, shortcut_forcing_loss
from nanodreamer.errors import UserError
from nanodreamer.eval.dynamics import evaluate_dynamics
from nanodreamer.recipes import DynamicsSettings
from nanodreamer.runs import fingerprint, load_tokenizer, load_weights
from nanodreamer.train.distributed import Distributed
from nanodreamer.train.trainer import Phase, TrainConfig, window_batches
from nanodreamer.world import WorldModel

# Every 8th step trains on windows twice the context (SPEC: short batches with occasional
# long ones), so rollouts past the window are in distribution.
_WINDOWS = dict(batch_size=16, seq_len=16, long_seq_len=32)
TRAIN_PRESETS = {
    "tiny": TrainConfig(steps=3000, lr=1e-3, warmup=100, **_WINDOWS),
    "small": TrainConfig(steps=20000, lr=5e-4, warmup=300, **_WINDOWS),
    "base": TrainConfig(steps=100000, lr=3e-4, warmup=1000, **_WINDOWS),
}


class DynamicsObjective(nn.Module):
    def __init__(self, dynamics: Dynamics):
        super().__init__()
        self.dynamics = dynamics

    def forward(self, batch: dict[str, torch.Tensor]):
        loss, metrics, _ = shortcut_forcing_loss(self.dynamics, **latent_batch(batch), rollout=True)
        return loss, metrics


class DynamicsPhase(Phase):
    name = "dynamics"

    def __init__(self, data, tokenizer_run, config: DynamicsConfig, train: TrainConfig, init=None):
        """`init`: a dynamics run to continue from (rounds)."""
        self.train, self.tokenizer_run, self.init = train, Path(tokenizer_run), init
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.latents = encode_dataset(data, tokenizer_run, device)
        self.config = config
        check_actions_match(self.latents, config)
        torch.manual_seed(train.seed)
        self.model = Dynamics(config)
        if init is not None:
            load_weights(init, self.model)
        self.objective = DynamicsObjective(self.model)

    def batches(self, start_step: int, env: Distributed):
        return window_batches(self.latents, self.train, start_step, env)

    def evaluate(self, model: Dynamics, run: Path, step: int) -> dict[str, float]:
        tokenizer = load_tokenizer(self.tokenizer_run, next(model.parameters()).device)
        world, gif = WorldModel(tokenizer, model, steps=4), run / "imagination.gif"
        return evaluate_dynamics(world, self.latents.data.path, gif=gif, quick=True)

    def run_info(self) -> dict:
        return {
            "model_config": asdict(self.config),
            "data": str(self.latents.data.path),
            "tokenizer": str(self.tokenizer_run.resolve()),
            "tokenizer_fingerprint": fingerprint(self.tokenizer_run),
            "init": str(Path(self.init).resolve()) if self.init else None,
        }


def check_actions_match(latents: LatentStore, config: DynamicsConfig) -> None:
    manifest = latents.data.manifest
    if manifest["action_dim"] != config.action_dim:
        raise UserError(
            f"{latents.data.path} has {manifest['action_dim']}-D actions, the dynamics model "
            f"{config.action_dim}-D: use a run trained on this env"
        )


def dynamics_config_for(
    latents: LatentStore, preset: DynamicsConfig, settings: DynamicsSettings, window: int
) -> DynamicsConfig:
    """The preset, sized to the tokenizer's latents, the dataset's actions and a training
    window of `window` frames, with the recipe's `settings`. Discrete actions take their
    number of choices; continuous ones `settings.action_bins` (None: the preset's)."""
    action_bins, manifest = settings.action_bins, latents.data.manifest
    bins = manifest["action_bins"]
    if bins and action_bins not in (None, max(bins)):
        raise UserError(
            f"{latents.data.path} has discrete actions with {max(bins)} choices: "
            f"drop --action-bins {action_bins} (the bins are the choices)"
        )
    if action_bins is not None and action_bins < 2:
        raise UserError(f"--action-bins must be at least 2, got {action_bins}")
    sizes = {k: latents.manifest[k] for k in ("n_latents", "latent_dim")}
    action_bins = max(bins) if bins else action_bins or preset.action_bins
    shares = dict(rollout_frac=settings.rollout_frac, independent_frac=settings.independent_frac)
    return replace(preset, **sizes, action_dim=manifest["action_dim"], action_bins=action_bins,
                   window=window, **shares)  # fmt: skip
