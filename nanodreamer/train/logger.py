"""Metrics go to `metrics.jsonl` always, TensorBoard by default, Weights & Biases on request
(`--wandb`; WANDB_MODE=offline works without a network)."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLogger:
    def __init__(self, run: Path, config: dict, tensorboard: bool = True, wandb: bool = False):
        self.file = open(run / "metrics.jsonl", "a")  # noqa: SIM115 - open for the whole run
        self.tb = self.wb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow: only when logging

            self.tb = SummaryWriter(run / "tensorboard")
        if wandb:
            import wandb as wandb_module  # optional: the [wandb] extra

            where = {"project": "nanodreamer", "name": run.name, "dir": str(run)}
            self.wb = wandb_module.init(**where, config=config, resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
        if self.wb is not None:
            self.wb.log(metrics, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()
