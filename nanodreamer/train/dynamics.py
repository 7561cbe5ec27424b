"""Phase 1b: train the dynamics model with shortcut forcing on cached tokenizer latents."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from nanodreamer.data.latents import LatentStore, encode_dataset, fingerprint
from nanodreamer.dynamics import Dynamics, DynamicsConfig, shortcut_forcing_loss
from nanodreamer.errors import UserError
from nanodreamer.train.checkpoint import load_weights, read_run
from nanodreamer.train.distributed import Distributed
from nanodreamer.train.tokenizer import load_tokenizer
from nanodreamer.train.trainer import TrainConfig, window_batches
from nanodreamer.world import WorldModel

# Every 8th step trains on windows twice the context (SPEC: short batches with occasional
# long ones), so rollouts past the window are in distribution.
TRAIN_PRESETS = {
    "tiny": TrainConfig(
        steps=3000, batch_size=16, seq_len=16, long_seq_len=32, lr=1e-3, warmup=100
    ),
    "small": TrainConfig(
        steps=20000, batch_size=16, seq_len=16, long_seq_len=32, lr=5e-4, warmup=300
    ),
    "base": TrainConfig(
        steps=100000, batch_size=16, seq_len=16, long_seq_len=32, lr=3e-4, warmup=1000
    ),
}


def latent_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dataset window -> dynamics inputs. Frames without a known action (an episode's first,
    an action-free episode's) get the no-action embedding."""
    return {
        "z1": batch["latents"].float(),
        "action": batch["action"],
        "has_action": batch["has_action"],
        "valid": batch["valid"],
        "is_first": batch["is_first"],
    }


class DynamicsObjective(nn.Module):
    def __init__(self, dynamics: Dynamics):
        super().__init__()
        self.dynamics = dynamics

    def forward(self, batch: dict[str, torch.Tensor]):
        loss, metrics, _ = shortcut_forcing_loss(self.dynamics, **latent_batch(batch), rollout=True)
        return loss, metrics


class DynamicsPhase:
    name = "dynamics"

    def __init__(
        self,
        data: str | Path,
        tokenizer_run: str | Path,
        config: DynamicsConfig,
        train: TrainConfig,
        init: str | Path | None = None,  # a dynamics run to continue from (rounds)
    ):
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
        from nanodreamer.eval.dynamics import evaluate_dynamics

        tokenizer = load_tokenizer(self.tokenizer_run, next(model.parameters()).device)
        world = WorldModel(tokenizer, model, steps=4)
        return evaluate_dynamics(
            world, self.latents.data.path, gif=run / "imagination.gif", quick=True
        )

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
    latents: LatentStore, preset: DynamicsConfig, action_bins: int | None = None
) -> DynamicsConfig:
    """The preset, sized to the tokenizer's latents and the dataset's actions. Discrete
    actions take their number of choices; continuous ones `action_bins` (default: the
    preset's)."""
    from dataclasses import replace

    manifest = latents.data.manifest
    bins = manifest["action_bins"]
    if bins and action_bins not in (None, max(bins)):
        raise UserError(
            f"{latents.data.path} has discrete actions with {max(bins)} choices: "
            f"drop --action-bins {action_bins} (the bins are the choices)"
        )
    if action_bins is not None and action_bins < 2:
        raise UserError(f"--action-bins must be at least 2, got {action_bins}")
    return replace(
        preset,
        n_latents=latents.manifest["n_latents"],
        latent_dim=latents.manifest["latent_dim"],
        action_dim=manifest["action_dim"],
        action_bins=max(bins) if bins else action_bins or preset.action_bins,
    )


def load_world_model(
    run: str | Path, device: str | torch.device = "cpu", steps: int = 4, **kwargs
) -> WorldModel:
    """Tokenizer + dynamics of a dynamics (or agent) run, checked to belong together."""
    info = read_run(run)
    if info.get("phase") not in ("dynamics", "agent", "imagination"):
        raise UserError(f"{run} is a {info.get('phase')} run, but a dynamics run is needed here")
    if fingerprint(info["tokenizer"]) != info["tokenizer_fingerprint"]:
        raise UserError(
            f"the tokenizer run {info['tokenizer']} changed after {run} was trained on it: "
            "retrain the dynamics model or restore that tokenizer"
        )
    tokenizer = load_tokenizer(info["tokenizer"], device)
    if info["phase"] == "dynamics":
        dynamics = Dynamics(DynamicsConfig(**info["model_config"]))
        load_weights(run, dynamics)
    else:  # an agent run's transformer (finetuned in phase 2, with its agent tokens)
        from nanodreamer.train.agent import load_agent

        dynamics = load_agent(run)[0].dynamics
    return WorldModel(tokenizer, dynamics.to(device), steps=steps, **kwargs)
