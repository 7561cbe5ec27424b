"""Phase 2: agent finetuning. The world model's transformer gets agent tokens and heads
(`agent.AgentModel`) and trains on the dataset: behaviour cloning, reward and continuation by
multi-token prediction, the dynamics loss kept on, with `value_gamma` the data policy's value."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm, trange

from nanodreamer.agent import (
    AgentConfig,
    AgentModel,
    data_value_loss,
    mtp_losses,
    mtp_targets,
    outcome_losses,
)
from nanodreamer.data import WindowDataset, split_episodes
from nanodreamer.data.latents import encode_dataset
from nanodreamer.data.sampler import labelled_episodes
from nanodreamer.dynamics import Dynamics, DynamicsConfig, latent_batch, shortcut_forcing_loss
from nanodreamer.errors import UserError
from nanodreamer.nn.normalize import RunningRMS
from nanodreamer.recipes import AgentSettings
from nanodreamer.runs import load_weights, read_run
from nanodreamer.train.distributed import Distributed
from nanodreamer.train.dynamics import check_actions_match
from nanodreamer.train.trainer import Phase, TrainConfig, window_batches

AGENT_TRAIN = TrainConfig(steps=2000, batch_size=8, lr=3e-4, warmup=100)


def agent_train_config(world_model: str | Path) -> TrainConfig:
    """Phase-2 defaults: windows of twice the world model's context, so that half of each
    window's frames have their whole receptive field inside it (`complete_context`)."""
    return replace(AGENT_TRAIN, seq_len=2 * read_run(world_model)["model_config"]["window"])


def validation_batch(latents, seq_len: int, count: int, model: nn.Module) -> dict:
    """`count` fixed validation windows of the latent cache, on the model's device."""
    data = WindowDataset(latents, seq_len, split="val", seed=1, labelled_only=True)
    device = next(model.parameters()).device
    batch = torch.utils.data.default_collate([data[i] for i in range(count)])
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def streamed_features(model: AgentModel, store, episode: int, chunk: int = 64):
    """One episode of a latent cache streamed through the key/value cache as when acting,
    every frame with its whole context: agent features (T,D) and `mtp_targets` (T,K)."""
    ep = store.load(episode, ("latents", "action", "reward", "is_first", "is_terminal"))
    device = next(model.parameters()).device
    batch = {k: torch.from_numpy(np.array(v))[None].to(device) for k, v in ep.items()}
    batch["valid"] = torch.ones_like(batch["is_first"])
    inputs = (batch["latents"].float(), batch["action"].float(), ~batch["is_first"])
    cache = model.dynamics.new_cache()
    chunks = range(0, len(ep["action"]), chunk)
    h = torch.cat([model.observe(*(x[:, t : t + chunk] for x in inputs), cache) for t in chunks], 1)
    targets = mtp_targets(batch, model.heads.config.mtp, window=1)  # every context complete
    return h[0], {k: v[0] for k, v in targets.items()}


def fit_heads(model: AgentModel, store, steps: int, batch_size=512, lr=1e-3, seed=0) -> dict:
    """The reward and continuation heads refit on the frozen transformer's features of every
    action-labelled training frame, `steps` updates of `batch_size` frames. Phase 2 shows the
    heads each frame about once, while they read features that still move; a sparse reward
    (Boxing: 3% of the steps) needs many passes (bench/log/atari-recipe.md)."""
    labelled = labelled_episodes(store)
    episodes = [i for i in split_episodes(store, "train") if labelled[i]]
    parts = [streamed_features(model, store, i) for i in tqdm(episodes, desc="head fit: features")]
    h = torch.cat([features for features, _ in parts])  # (N,D)
    targets = {k: torch.cat([t[k] for _, t in parts]) for k in parts[0][1]}  # (N,K)
    heads = model.heads
    optimizer = torch.optim.AdamW([*heads.reward.parameters(), *heads.cont.parameters()], lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in trange(steps, desc="head fit"):
        i = torch.randint(len(h), (batch_size,), generator=generator).to(h.device)
        losses = outcome_losses(heads, h[i], {k: v[i] for k, v in targets.items()})
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    return {"frames": len(h)} | {k: v.item() for k, v in losses.items()}


class AgentObjective(nn.Module):
    def __init__(self, model: AgentModel, value_gamma: float | None):
        """`value_gamma`: also fit the value head to the data's returns with this discount
        (`data_value_loss`); otherwise it first trains in phase 3."""
        super().__init__()
        self.model, self.value_gamma = model, value_gamma
        fit_value = value_gamma is not None
        model.heads.value.requires_grad_(fit_value)
        terms = ("dynamics", "bc", "reward", "cont") + (("value",) if fit_value else ())
        self.norm = RunningRMS(dict.fromkeys(terms, 1.0))

    def forward(self, batch: dict[str, torch.Tensor]):
        inputs = latent_batch(batch)
        dyn_loss, metrics, _ = shortcut_forcing_loss(self.model.dynamics, **inputs)
        features = self.model.context_features(inputs)
        window = self.model.dynamics.config.window
        terms = {"dynamics": dyn_loss} | mtp_losses(self.model.heads, features, batch, window)
        if self.value_gamma is not None:
            heads = self.model.heads
            terms["value"] = data_value_loss(heads, features, batch, window, self.value_gamma)
        return self.norm(terms), metrics | {k: v.detach() for k, v in terms.items()}


class AgentPhase(Phase):
    name = "agent"

    def __init__(
        self, data, world_model: str | Path, train: TrainConfig,
        settings: AgentSettings | None = None, init=None, mtp: int = 8,
    ):  # fmt: skip
        """`settings`: the recipe's (`recipes.AgentSettings`; default: car racing's). `init`:
        an agent or imagination run whose agent tokens and heads to continue from (rounds);
        the transformer always starts from `world_model`."""
        info = read_run(world_model, "dynamics")
        self.train, self.world_model, self.info, self.init = train, Path(world_model), info, init
        self.settings = settings or AgentSettings()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.latents = encode_dataset(data, info["tokenizer"], device)
        config = replace(DynamicsConfig(**info["model_config"]), agent_tokens=1)
        check_actions_match(self.latents, config)
        if train.seq_len < config.window:
            raise UserError(
                f"--seq-len {train.seq_len} is shorter than the world model's context of "
                f"{config.window} frames: no frame would see a whole context (use >= "
                f"{config.window}, default {2 * config.window})"
            )
        bins = config.action_bins
        self.agent_config = AgentConfig(config.dim, config.action_dim, bins, mtp=mtp)
        torch.manual_seed(train.seed)
        self.model = AgentModel(config, self.agent_config)
        if init is not None:
            load_weights(init, self.model)
        dynamics = Dynamics(DynamicsConfig(**info["model_config"]))
        load_weights(world_model, dynamics)
        self._start_from(dynamics)
        self.objective = AgentObjective(self.model, self.settings.value_gamma)

    @torch.no_grad()
    def _start_from(self, dynamics: Dynamics) -> None:
        """Copy the world model's weights; the agent tokens (appended last in each frame) get
        new embeddings and new rows and columns of the space-attention bias."""
        state = dynamics.state_dict()
        old_bias = state.pop("transformer.space_bias")
        missing, _ = self.model.dynamics.load_state_dict(state, strict=False)
        assert set(missing) == {"task_embed.weight", "agent_pos", "transformer.space_bias"}
        s = old_bias.shape[-1]
        self.model.dynamics.transformer.space_bias[:, :s, :s] = old_bias

    def batches(self, start_step: int, env: Distributed):
        return window_batches(self.latents, self.train, start_step, env, labelled_only=True)

    @torch.no_grad()
    def evaluate(self, model: AgentModel, run: Path, step: int) -> dict[str, float]:
        """Phase-2 losses on validation windows."""
        batch = validation_batch(self.latents, self.train.seq_len, 16, model)
        features = model.context_features(latent_batch(batch))
        window = model.dynamics.config.window
        return {k: v.item() for k, v in mtp_losses(model.heads, features, batch, window).items()}

    def finish(self, model: AgentModel) -> None:
        if self.settings.head_fit_steps:
            fit_heads(model, self.latents, self.settings.head_fit_steps, seed=self.train.seed)

    def run_info(self) -> dict:
        return {
            "model_config": asdict(self.model.dynamics.config),
            "agent_config": asdict(self.agent_config),
            "data": str(self.latents.data.path),
            "world_model": str(self.world_model.resolve()),
            "tokenizer": self.info["tokenizer"],
            "tokenizer_fingerprint": self.info["tokenizer_fingerprint"],
            "init": str(Path(self.init).resolve()) if self.init else None,
        } | asdict(self.settings)  # value_gamma, head_fit_steps
