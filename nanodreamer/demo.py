"""`nanodreamer demo`: the whole pipeline in one folder, within a time budget.

collect (random policy) -> tokenizer -> dynamics -> agent (BC + reward) -> imagination (PMPO)
-> evaluation. Presets are chosen by device (tiny on CPU, small on a GPU); the budget in
minutes is split between the training phases. Phases already finished in the folder are
skipped, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from nanodreamer.data import EpisodeStore, collect, summarize
from nanodreamer.eval.pictures import plot_metrics
from nanodreamer.io import write_json
from nanodreamer.train import distributed
from nanodreamer.train.trainer import TrainConfig, Trainer

SHARES = {"tokenizer": 0.3, "dynamics": 0.3, "agent": 0.12, "imagination": 0.13}
PLOTS = {
    "tokenizer": ("mse", "val/psnr"),
    "dynamics": ("flow_mse", "bootstrap_mse", "val/psnr_h8"),
    "agent": ("dynamics", "bc", "reward", "val/bc"),
    "imagination": ("return", "advantage_positive", "kl", "value_error"),
}


def run_demo(
    out: str | Path,
    minutes: float = 15.0,
    env: str = "car-racing",
    episodes: int = 10,
    max_episode_steps: int = 500,
    workers: int = 2,
) -> dict:
    out = Path(out)
    device = distributed.setup()
    preset = "small" if device.device.type == "cuda" else "tiny"
    print(f"demo: {env}, {minutes:g} minutes, preset {preset} on {device.device}, in {out}")
    data = out / "data"
    have = len(EpisodeStore(data)) if (data / "manifest.json").exists() else 0
    if have < episodes:
        collect(
            env,
            data,
            episodes - have,
            workers=workers,
            env_options={"action_repeat": 1, "max_episode_steps": max_episode_steps},
        )
    results = {"data": summarize(EpisodeStore(data))}
    budget = {phase: minutes * share for phase, share in SHARES.items()}
    results["tokenizer"] = _tokenizer(data, out / "tokenizer", preset, budget["tokenizer"], device)
    results["dynamics"] = _dynamics(data, out, preset, budget["dynamics"], device)
    results["agent"] = _agent(data, out, budget["agent"], budget["imagination"], device)
    results["agent"]["real_env"] = _evaluate_agent(out, env)
    for phase, keys in PLOTS.items():
        plot_metrics(out / phase / "metrics.jsonl", out / f"{phase}_losses.png", keys)
    write_json(out / "metrics.json", results)
    (out / "summary.md").write_text(summary(results, out, minutes, preset))
    print(f"\ndemo folder: {out.resolve()} (open summary.md first)")
    return results


def _train(run: Path, phase, cfg: TrainConfig, device) -> dict:
    if (run / "model.safetensors").exists():
        print(f"{run} is done: skipping")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {k[4:]: v for r in rows for k, v in r.items() if k.startswith("val/")}
    return Trainer(run, phase, cfg, device).fit()


def _budget(cfg: TrainConfig, minutes: float) -> TrainConfig:
    return replace(cfg, minutes=minutes, steps=1_000_000, eval_every=1_000_000, save_every=250)


def _tokenizer(data: Path, run: Path, preset: str, minutes: float, device) -> dict:
    from nanodreamer.tokenizer import TOKENIZER_PRESETS
    from nanodreamer.train.tokenizer import TRAIN_PRESETS, TokenizerPhase, tokenizer_config_for

    cfg = _budget(TRAIN_PRESETS[preset], minutes)
    config = tokenizer_config_for(data, TOKENIZER_PRESETS[preset], cfg.seq_len)
    return _train(run, TokenizerPhase(data, config, cfg), cfg, device)


def _dynamics(data: Path, out: Path, preset: str, minutes: float, device) -> dict:
    from nanodreamer.data.latents import encode_dataset
    from nanodreamer.dynamics import DYNAMICS_PRESETS
    from nanodreamer.eval.dynamics import evaluate_dynamics
    from nanodreamer.train.dynamics import (
        TRAIN_PRESETS,
        DynamicsPhase,
        dynamics_config_for,
        load_world_model,
    )

    cfg = _budget(TRAIN_PRESETS[preset], minutes)
    latents = encode_dataset(data, out / "tokenizer", device.device)
    config = replace(dynamics_config_for(latents, DYNAMICS_PRESETS[preset]), window=cfg.seq_len)
    _train(out / "dynamics", DynamicsPhase(data, out / "tokenizer", config, cfg), cfg, device)
    world = load_world_model(out / "dynamics", device.device)
    return evaluate_dynamics(world, data, gif=out / "imagination.gif", windows=8)


def _agent(data: Path, out: Path, agent_minutes: float, imagination_minutes: float, device):
    from nanodreamer.train.agent import (
        AgentPhase,
        ImaginationPhase,
        agent_train_config,
        imagination_train_config,
    )

    cfg = _budget(agent_train_config(out / "dynamics"), agent_minutes)
    bc = _train(out / "agent", AgentPhase(data, out / "dynamics", cfg), cfg, device)
    cfg = _budget(imagination_train_config(out / "agent"), imagination_minutes)
    imagination = _train(out / "imagination", ImaginationPhase(out / "agent", cfg), cfg, device)
    return {"bc": bc, "imagination": imagination}


def _evaluate_agent(out: Path, env: str, episodes: int = 5) -> dict:
    """Full-length episodes on fresh seeds (the same for every policy), and the world model's
    figures for control (`eval.control`)."""
    from nanodreamer.eval.agent import evaluate_agent
    from nanodreamer.eval.control import control_figures

    results = evaluate_agent(out / "imagination", env, episodes, video=out / "agent.gif")
    bc = evaluate_agent(out / "agent", env, episodes, random=False)
    results |= {f"bc_{k}": bc[k] for k in ("return_mean", "return_std", "return_ci95")}
    return results | control_figures(out / "imagination")


def summary(results: dict, out: Path, minutes: float, preset: str) -> str:
    d, t, w = results["data"], results["tokenizer"], results["dynamics"]
    a = results["agent"]["real_env"]
    nan = float("nan")
    rows = "\n".join(
        f"| h{h} | {w[f'psnr_h{h}']:.2f} | {w[f'baseline_psnr_h{h}']:.2f} | "
        f"{w[f'ceiling_psnr_h{h}']:.2f} | {w.get(f'shuffled_psnr_h{h}', nan):.2f} | "
        f"{w.get(f'counterfactual_psnr_h{h}', nan):.2f} | "
        f"{w.get(f'ignore_actions_psnr_h{h}', nan):.2f} |"
        for h in (1, 4, 8, 16)
    )
    return f"""# nanodreamer demo

{d["env"]}, {minutes:g}-minute budget, preset `{preset}`. Everything below was produced by
this run; `metrics.json` holds every number.

## Data
{d["episodes"]} episodes, {d["frames"]} frames collected with a random policy
(return {d["episode_return"]["mean"]:.1f} ± {d["episode_return"]["std"]:.1f}).

## Tokenizer
Held-out reconstruction: PSNR {t.get("psnr", float("nan")):.2f} dB, SSIM
{t.get("ssim", float("nan")):.3f}. ![reconstruction](tokenizer/reconstruction.gif)
(left: real, right: reconstructed). Losses: `tokenizer_losses.png`.

## Dynamics
Open-loop rollouts after {w["context"]} real frames, PSNR in dB:

| h | model | copy last | tokenizer ceiling | shuffled actions | counterfactual | ignore actions |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

Controllability (counterfactual minus ignore-actions PSNR at h8, the real env replayed under
other actions): **{w.get("controllability_h8", nan):+.2f} dB** (clearly above 0: the model
follows actions; about 0: it ignores them).

Generation: {w["fps"]:.1f} frames/s with the key/value cache,
{w.get("fps_no_cache", float("nan")):.1f} without. ![imagination](imagination.gif)
(left: real, right: real context then imagined).

## Agent
Real-environment return over {a["episodes"]} full-length episodes on seeds no collection used
(mean ± 95% interval): imagination-trained policy {a["return_mean"]:.1f} ±
{a["return_ci95"]:.1f}, behaviour-cloning policy {a["bc_return_mean"]:.1f} ±
{a["bc_return_ci95"]:.1f}, random policy {a["random_return_mean"]:.1f} ±
{a["random_return_ci95"]:.1f}. ![agent](agent.gif)
Imagined rollouts of the policy: `imagination/imagined_policy.gif`.

How good the world model is for control: reward model on held-out episodes MAE
{a.get("reward_mae", nan):.3f}, correlation {a.get("reward_corr", nan):.2f}; under other
actions (real env replayed) correlation {a.get("counterfactual_reward_corr", nan):.2f}; the
policy's imagined 16-step return {a.get("imagined_return", nan):.2f} against its real one
{a.get("real_return_h16", nan):.2f} from the same states (correlation
{a.get("imagined_real_corr", nan):.2f}).

## Drive it yourself
`nanodreamer play --run {out}/dynamics --data {out}/data --agent {out}/imagination`, then open
http://127.0.0.1:8000/ (arrow keys or WASD).
"""
