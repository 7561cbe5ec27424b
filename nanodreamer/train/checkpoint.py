"""Run folders: `run.json` (phase and configs), `checkpoint.pt` (everything needed to resume),
`model.safetensors` (weights with their config, for inference and sharing).
All written atomically."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from nanodreamer.errors import UserError
from nanodreamer.io import atomic_write, write_json

RUN_FILE, CHECKPOINT, WEIGHTS = "run.json", "checkpoint.pt", "model.safetensors"


PATHS = ("data", "tokenizer", "world_model", "agent_run", "init")  # run.json's links


def read_run(run: str | Path, phase: str | None = None) -> dict:
    """run.json of `run`; with `phase`, refuse a run of any other phase. A relative link
    (`PATHS`: a packed run's) is taken from the run folder and returned absolute."""
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise UserError(f"{run} is not a training run (no {RUN_FILE}): train one first")
    info = json.loads(path.read_text())
    for key in PATHS:
        if isinstance(info.get(key), str) and not Path(info[key]).is_absolute():
            info[key] = str((Path(run) / info[key]).resolve())
    if phase is not None and info.get("phase") != phase:
        raise UserError(f"{run} is a {info.get('phase')} run, but a {phase} run is needed here")
    return info


def write_run(run: Path, info: dict) -> None:
    write_json(run / RUN_FILE, info)


def save_checkpoint(run: Path, state: dict) -> None:
    atomic_write(run / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run: Path) -> dict:
    path = Path(run) / CHECKPOINT
    if not path.is_file():
        raise UserError(f"{run} has no {CHECKPOINT} to resume from: start without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise UserError(f"{path} is corrupt ({err}): remove it and train again") from None


def export_weights(run: Path, model: nn.Module, info: dict) -> None:
    """Weights as safetensors, with run.json's content as metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"run": json.dumps(info)}
    atomic_write(run / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(model: nn.Module, state: dict, source: str | Path) -> None:
    """Load a state dict, turning any mismatch into one line that names the run."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise UserError(
            f"{source} does not match this model's config ({first}): use the run's own config"
        ) from None


def load_weights(run: str | Path, model: nn.Module, only: tuple[str, ...] = ()) -> None:
    """Load a run's exported weights into `model`; with `only`, just the parameters under
    those prefixes (e.g. ("heads.policy.",)), the rest of the model kept as it is."""
    path = Path(run) / WEIGHTS
    if not path.is_file():
        raise UserError(f"{run} has no {WEIGHTS}: its training never finished a checkpoint")
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is corrupt ({err}): export it again") from None
    if only:
        state = {k: v for k, v in state.items() if k.startswith(only)}
        state = model.state_dict() | state
    load_state(model, state, path)
