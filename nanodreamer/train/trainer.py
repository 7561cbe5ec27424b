"""The training loop shared by every phase. A phase gives an `objective` module (forward(batch)
-> (loss, metrics)), the `model` in it to save, batches and an evaluation; the trainer owns
AdamW with warm-up and cosine decay, clipping, bf16 autocast on CUDA, torch.compile, activation
checkpointing, EMA weights, DDP, checkpoints, logs and the progress bar."""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch._functorch.config as compile_config
from torch import nn
from tqdm.auto import tqdm

from nanodreamer import runs
from nanodreamer.data import WindowDataset, window_loader
from nanodreamer.data.sampler import labelled_episodes
from nanodreamer.errors import UserError
from nanodreamer.nn.transformer import CHECKPOINTING, AxialTransformer
from nanodreamer.recipes import knob
from nanodreamer.train.distributed import Distributed, max_over_ranks, mean_over_ranks

RERUN = "activation checkpointing: rerun each block (full) or its cheap ops (selective)"


@dataclass
class TrainConfig:
    """A phase's training settings; a field made with `knob` is also a `train` flag."""

    steps: int = knob(1000, "optimizer steps")
    batch_size: int = knob(8, "windows per step, per process")
    seq_len: int = knob(8, "frames per training window (dynamics: the recipe's window)")
    long_seq_len: int = 0  # > 0: every long_every-th step trains on windows this long
    long_every: int = 8
    labelled_frac: float = 1.0  # < 1: hide the actions of the other labelled episodes
    lr: float = knob(1e-3, "peak learning rate")
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    minutes: float | None = knob(None, "time budget: stop then; the LR schedule follows it")
    eval_every: int = knob(250, "steps between evaluations")
    save_every: int = 250
    log_every: int = 10
    seed: int = knob(0, "initialisation and data order")
    workers: int = knob(2, "data loader processes")
    compile: bool = knob(False, "torch.compile the training step")
    checkpointing: str = knob("none", RERUN, tuple(CHECKPOINTING))
    memory_budget: float = knob(1.0, "with --compile: share (0-1] of activations kept")
    ema: float = knob(0.0, "EMA decay of the weights evaluated and exported (0: off)")
    tensorboard: bool = knob(True, "TensorBoard logs")
    wandb: bool = knob(False, "log to Weights & Biases")


def window_batches(
    source, cfg: TrainConfig, start_step: int, env: Distributed, labelled_only: bool = False
) -> Iterator[dict]:
    """Training windows from an episode or latent store, for this rank. With `long_seq_len`,
    every `long_every`-th step draws longer windows (fewer, the same number of frames), so the
    model also learns to run past its context; `labelled_frac` < 1 hides some episodes' actions."""
    labelled = labelled_episodes(source, cfg.labelled_frac, cfg.seed)
    ranks = {"rank": env.rank, "world": env.world, "workers": cfg.workers}

    def stream(seq_len: int, batch_size: int, step: int, seed: int):
        labels = {"labelled": labelled, "labelled_only": labelled_only}
        data = WindowDataset(source, seq_len, split="train", seed=seed, **labels)
        return iter(window_loader(data, batch_size, start_step=step, **ranks))

    if not cfg.long_seq_len:
        yield from stream(cfg.seq_len, cfg.batch_size, start_step, cfg.seed)
        return
    long_steps = lambda step: step // cfg.long_every  # noqa: E731 - long steps before `step`
    short = stream(cfg.seq_len, cfg.batch_size, start_step - long_steps(start_step), cfg.seed)
    long_batch = max(1, cfg.batch_size * cfg.seq_len // cfg.long_seq_len)
    long = stream(cfg.long_seq_len, long_batch, long_steps(start_step), cfg.seed + 1)
    for step in itertools.count(start_step):
        yield next(long if step % cfg.long_every == cfg.long_every - 1 else short)


class Phase(Protocol):
    name: str
    model: nn.Module  # what is saved and exported
    objective: nn.Module  # forward(batch) -> (loss, metrics); contains `model`

    def batches(self, start_step: int, env: Distributed) -> Iterator[dict]: ...

    def evaluate(self, model: nn.Module, run: Path, step: int) -> dict[str, float]: ...

    def run_info(self) -> dict: ...

    def finish(self, model: nn.Module) -> None:
        """After the last update, before the final save (phase 2: `agent.fit_heads`)."""


BAR = "{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]"  # whole seconds


def learning_rate(cfg: TrainConfig, progress: float, step: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine from lr to lr * min_lr_ratio."""
    warm = min(1.0, (step + 1) / max(cfg.warmup, 1))
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    state["python"] = random.getstate()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_memory_options(cfg: TrainConfig) -> None:
    if cfg.checkpointing not in CHECKPOINTING:
        raise UserError(
            f"checkpointing {cfg.checkpointing!r} is unknown: use one of {', '.join(CHECKPOINTING)}"
        )
    if not 0 < cfg.memory_budget <= 1:
        raise UserError(f"memory budget {cfg.memory_budget} must lie in (0, 1]")
    if cfg.memory_budget < 1 and not cfg.compile:
        raise UserError("--memory-budget is a torch.compile setting: add --compile")


class MetricsLogger:
    """Metrics to `metrics.jsonl` always, TensorBoard by default, Weights & Biases on request
    (`--wandb`; WANDB_MODE=offline works without a network)."""

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


class Trainer:
    def __init__(self, run: str | Path, phase: Phase, cfg: TrainConfig, env: Distributed):
        self.run, self.phase, self.cfg, self.env = Path(run), phase, cfg, env
        _check_memory_options(cfg)
        self.model = phase.model
        self.objective = phase.objective.to(env.device)
        for module in self.objective.modules():
            if isinstance(module, AxialTransformer):
                module.checkpointing = cfg.checkpointing
        params = [p for p in self.objective.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay}]
        groups.append({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0})
        cuda = env.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=cuda)
        self.ema = None
        if cfg.ema:
            average = torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema)
            self.ema = torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=average)
        self.step, self.elapsed, self.finished = 0, 0.0, False
        self.train_step = self.objective
        if env.world > 1:
            self.train_step = nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[env.device.index] if env.device.type == "cuda" else None
            )
        if cfg.compile:
            self.train_step = torch.compile(self.train_step)
        # torch.compile's partitioner reads the budget when it compiles, at the first step
        self.compile_options = compile_config.patch(activation_memory_budget=cfg.memory_budget)
        self.autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=cuda)

    # state --------------------------------------------------------------------------------------
    def info(self) -> dict:
        """run.json: the phase, its model and data, the training config, and how far it got
        (`finished` once the last step is saved: what a pipeline checks before skipping it)."""
        train = {"train": asdict(self.cfg), "steps_done": self.step, "finished": self.finished}
        return {"phase": self.phase.name, **self.phase.run_info(), **train}

    def state(self) -> dict:
        return {
            "objective": self.objective.state_dict(),  # the model, loss normalisers, priors
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "schedule": {"step": self.step, "elapsed": self.elapsed},
            "rng": _rng_state(),
            "info": self.info(),
        }

    def resume(self) -> None:
        saved = runs.read_run(self.run, self.phase.name)
        mine = self.phase.run_info()
        for key in mine:
            if key.endswith("config") and saved.get(key) != mine[key]:
                raise UserError(
                    f"{self.run} was trained with a different {key} ({saved.get(key)}): "
                    "resume with the same preset and options"
                )
        state = runs.load_checkpoint(self.run)
        runs.load_state(self.objective, state["objective"], self.run / runs.CHECKPOINT)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.elapsed = state["schedule"]["step"], state["schedule"]["elapsed"]
        _set_rng_state(state["rng"])

    def save(self) -> None:
        if not self.env.main:
            return
        runs.save_checkpoint(self.run, self.state())
        runs.export_weights(self.run, self.eval_model, self.info())
        runs.write_run(self.run, self.info())

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # loop ---------------------------------------------------------------------------------------
    def progress(self) -> float:
        by_time = self.elapsed / (60 * self.cfg.minutes) if self.cfg.minutes else 0.0
        return max(self.step / self.cfg.steps, by_time)

    def fit(self, resume: bool = False) -> dict[str, float]:
        cfg, env = self.cfg, self.env
        self.run.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        elif (self.run / runs.CHECKPOINT).exists():
            raise UserError(f"{self.run} already holds a run: pass --resume or pick a new --out")
        else:
            random.seed(cfg.seed + env.rank)
            np.random.seed(cfg.seed + env.rank)
            torch.manual_seed(cfg.seed + env.rank)
        logger = None
        if env.main:
            logger = MetricsLogger(self.run, self.info(), cfg.tensorboard, cfg.wandb)
            runs.write_run(self.run, self.info())
        batches = self.phase.batches(self.step, env)
        by_time = bool(cfg.minutes)  # the bar counts seconds of the budget, or steps
        total, done = (60 * cfg.minutes, self.elapsed) if by_time else (cfg.steps, self.step)
        show = {"unit": "s" if by_time else "step", "desc": f"train {self.phase.name}"}
        show |= {"disable": not env.main, "bar_format": BAR}
        bar = tqdm(total=total, initial=min(done, total), **show)
        last_eval: dict[str, float] = {}
        window_start, window_items, window_metrics = time.perf_counter(), 0, []
        self.objective.train()
        try:
            while self.step < cfg.steps and self.progress() < 1.0:
                tick = time.perf_counter()
                batch = {k: v.to(env.device, non_blocking=True) for k, v in next(batches).items()}
                lr = learning_rate(cfg, self.progress(), self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with self.autocast, self.compile_options:
                    loss, metrics = self.train_step(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.objective.parameters(), cfg.grad_clip)
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.step += 1
                self.elapsed += time.perf_counter() - tick
                if cfg.minutes:  # every rank must stop at the same step
                    self.elapsed = max_over_ranks(self.elapsed, env)
                finished = self.step >= cfg.steps or self.progress() >= 1.0
                window_items += batch[next(iter(batch))].shape[0] * cfg.seq_len
                window_metrics.append({"loss": loss.detach(), "grad_norm": grad_norm, **metrics})
                if self.step % cfg.log_every == 0 or finished:
                    row = self._summarise(window_metrics, window_items, window_start, lr)
                    window_start, window_items, window_metrics = time.perf_counter(), 0, []
                    if logger:
                        logger.log(self.step, row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", fps=f"{row['frames_per_s']:.0f}")
                # a step may overrun the budget; tqdm drops a total it has passed
                bar.update(min(time.perf_counter() - tick, bar.total - bar.n) if by_time else 1)
                if finished:
                    self._finish()
                if self.step % cfg.eval_every == 0 or finished:
                    last_eval = self._evaluate(logger)
                if self.step % cfg.save_every == 0 or finished:
                    self.finished = finished
                    self.save()
            if not self.finished:  # resumed with nothing left to train
                self._finish()
                self.finished = True
                self.save()
        finally:
            bar.close()
            if logger:
                logger.close()
        return last_eval

    def _finish(self) -> None:
        if self.env.main:
            self.phase.finish(self.eval_model)
        self.env.barrier()

    def _summarise(self, rows: list[dict], items: int, start: float, lr: float) -> dict[str, float]:
        keys = rows[0].keys()
        means = {k: torch.stack([r[k].float() for r in rows]).mean().item() for k in keys}
        means, seconds = mean_over_ranks(means, self.env), time.perf_counter() - start
        rates = dict(frames_per_s=items * self.env.world / seconds, step_time_s=seconds / len(rows))
        return means | rates | {"lr": lr, "elapsed_min": self.elapsed / 60}

    def _evaluate(self, logger: MetricsLogger | None) -> dict[str, float]:
        results = {}
        if self.env.main:
            model = self.eval_model
            was_training = model.training
            model.eval()
            with torch.no_grad(), self.autocast:
                results = self.phase.evaluate(model, self.run, self.step)
            model.train(was_training)
            if logger:
                row = {f"val/{k}": v for k, v in results.items()}
                logger.log(self.step, row | {"elapsed_min": self.elapsed / 60})
        self.env.barrier()
        return results
