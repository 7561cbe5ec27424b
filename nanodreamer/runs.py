"""Run folders and everything that reads them back: `run.json` (phase and configs),
`checkpoint.pt` (everything needed to resume), `model.safetensors` (weights with their config,
for inference and sharing), all written atomically; and the loaders of trained models
(`load_tokenizer`, `load_world_model`, `load_agent`), which training, evaluation and play share."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from nanodreamer.agent import AgentConfig, AgentModel
from nanodreamer.dynamics import Dynamics, DynamicsConfig
from nanodreamer.errors import UserError
from nanodreamer.io import atomic_write, write_json
from nanodreamer.tokenizer import Tokenizer, TokenizerConfig
from nanodreamer.world import WorldModel

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


def export_weights(run: Path, weights: nn.Module | str | Path, info: dict) -> None:
    """A model's weights, or a run folder's (copied), as safetensors with `info` (run.json's
    content) as metadata."""
    if isinstance(weights, nn.Module):
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.state_dict().items()}
    else:
        tensors = load_file(Path(weights) / WEIGHTS)
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


def fingerprint(tokenizer_run: str | Path) -> str:
    """A hash of a tokenizer's weights: names its latent cache, and lets a dynamics run check
    that its tokenizer has not changed since."""
    weights = Path(tokenizer_run) / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{tokenizer_run} has no {WEIGHTS}: train the tokenizer first")
    with open(weights, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def config_from(cls, values: dict, run: str | Path):
    """A config dataclass from a run.json section, naming any field this version lacks."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(
            f"{run} was trained with {cls.__name__} fields this version does not have "
            f"({', '.join(unknown)}): retrain it, or use the nanodreamer version that made it"
        )
    return cls(**values)


def load_tokenizer(run: str | Path, device: str | torch.device = "cpu") -> Tokenizer:
    """The trained tokenizer of a run folder, in eval mode."""
    info = read_run(run, "tokenizer")
    model = Tokenizer(config_from(TokenizerConfig, info["model_config"], run))
    load_weights(run, model)
    return model.to(device).eval()


def read_agent_run(run: str | Path, phases=("agent", "imagination"), needed="an agent") -> dict:
    """run.json of a run of one of `phases`."""
    info = read_run(run)
    if info.get("phase") not in phases:
        raise UserError(f"{run} is a {info.get('phase')} run, but {needed} run is needed here")
    return info


def load_agent(run: str | Path, device="cpu") -> tuple[AgentModel, dict]:
    """The agent (dynamics transformer with agent tokens, and heads) of an agent or
    imagination run, in eval mode, with its run.json."""
    info = read_agent_run(run)
    dynamics = config_from(DynamicsConfig, info["model_config"], run)
    model = AgentModel(dynamics, config_from(AgentConfig, info["agent_config"], run))
    load_weights(run, model)
    return model.to(device).eval(), info


def load_world_model(
    run: str | Path, device: str | torch.device = "cpu", steps: int = 4, **kwargs
) -> WorldModel:
    """Tokenizer + dynamics of a dynamics (or agent) run, checked to belong together."""
    info = read_agent_run(run, ("dynamics", "agent", "imagination"), "a dynamics")
    if fingerprint(info["tokenizer"]) != info["tokenizer_fingerprint"]:
        raise UserError(
            f"the tokenizer run {info['tokenizer']} changed after {run} was trained on it: "
            "retrain the dynamics model or restore that tokenizer"
        )
    tokenizer = load_tokenizer(info["tokenizer"], device)
    if info["phase"] == "dynamics":
        dynamics = Dynamics(config_from(DynamicsConfig, info["model_config"], run))
        load_weights(run, dynamics)
    else:  # an agent run's transformer (finetuned in phase 2, with its agent tokens)
        dynamics = load_agent(run)[0].dynamics
    return WorldModel(tokenizer, dynamics.to(device), steps=steps, **kwargs)
