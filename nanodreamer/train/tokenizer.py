"""Phase 1a: train the causal tokenizer on windows of dataset frames."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from nanodreamer.data import EpisodeStore
from nanodreamer.data.latents import check_dataset_matches
from nanodreamer.eval.tokenizer import evaluate_tokenizer, validation_windows
from nanodreamer.tokenizer import Tokenizer, TokenizerConfig, frames_from_uint8
from nanodreamer.train.distributed import Distributed
from nanodreamer.train.trainer import Phase, TrainConfig, window_batches

# Training defaults per preset (tuned for throughput: quality in a time budget follows steps).
TRAIN_PRESETS = {
    "tiny": TrainConfig(steps=3000, batch_size=16, seq_len=4, lr=2e-3, warmup=100),
    "small": TrainConfig(steps=20000, batch_size=16, seq_len=4, lr=1.5e-3, warmup=200),
    "base": TrainConfig(steps=100000, batch_size=16, seq_len=8, lr=5e-4, warmup=1000),
}


class TokenizerObjective(nn.Module):
    def __init__(self, tokenizer: Tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, batch: dict[str, torch.Tensor]):
        # uint8 frames travel to the device and are normalised there
        return self.tokenizer.loss(frames_from_uint8(batch["obs"]), batch["valid"])


class TokenizerPhase(Phase):
    name = "tokenizer"

    def __init__(self, data: str | Path, config: TokenizerConfig, train: TrainConfig):
        self.data, self.config, self.train = Path(data), config, train
        check_dataset_matches(self.data, config)
        torch.manual_seed(train.seed)  # the same initial weights on every rank and every run
        self.model = Tokenizer(config)
        self.objective = TokenizerObjective(self.model)
        self._val = None

    def batches(self, start_step: int, env: Distributed):
        for batch in window_batches(EpisodeStore(self.data), self.train, start_step, env):
            yield {"obs": batch["obs"], "valid": batch["valid"]}

    def evaluate(self, model: Tokenizer, run: Path, step: int) -> dict[str, float]:
        if self._val is None:
            self._val = validation_windows(self.data, self.train.seq_len)
        return evaluate_tokenizer(model, self._val, gif=run / "reconstruction.gif")

    def run_info(self) -> dict:
        return {"model_config": asdict(self.config), "data": str(Path(self.data).resolve())}


def tokenizer_config_for(data: str | Path, preset: TokenizerConfig, window: int) -> TokenizerConfig:
    """The preset, sized to the dataset's frames. Frames under 64 pixels get 4-pixel patches,
    at most one latent per 4 patches (a small code: a tiny scene's motion is learnt in
    minutes) and masking of at most half the patches (90% of 16 leaves too little)."""
    height, _, channels = EpisodeStore(data).manifest["obs_shape"]
    config = replace(preset, image_size=height, channels=channels, window=window)
    if height >= 64:
        return config
    patch = 4
    latents = min(preset.n_latents, max(1, (height // patch) ** 2 // 4))
    return replace(config, patch=patch, n_latents=latents, mask_max=min(preset.mask_max, 0.5))
