"""`nanodreamer demo`: the whole pipeline in one folder, within a time budget: one call of the
rounds pipeline (`pipeline.py`: collect -> tokenizer -> dynamics -> agent -> imagination ->
evaluation, per round) and a summary of its last round. Presets are chosen by device (tiny on
CPU, small on a GPU). Finished phases are skipped, so an interrupted demo continues.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from nanodreamer.data import EpisodeStore
from nanodreamer.eval.dynamics import psnr_table
from nanodreamer.io import write_json
from nanodreamer.pipeline import round_dir, run_rounds
from nanodreamer.recipes import recipe


def run_demo(out, minutes=55.0, env="car-racing", episodes=100, env_options=None, workers=2,
             rounds=1) -> dict:  # fmt: skip
    """The car-racing recipe's rounds with `minutes` of training per round and its collection
    settings updated by `env_options` (`EnvSettings` fields) -> the last round's figures with
    round 0's tokenizer ones."""
    out, car = Path(out), recipe("car-racing")
    collect = replace(car.collect, **(env_options or {}))
    config = replace(car, env=env, collect=collect, rounds=rounds, first_episodes=episodes,
                     minutes=minutes, first_minutes=None, workers=workers)  # fmt: skip
    print(f"demo: {env}, {minutes:g} minutes per round, {rounds} round(s), in {out}")
    results = run_rounds(out, config)
    final = results[-1] | {"tokenizer": results[0]["tokenizer"]}
    write_json(out / "metrics.json", {"final": final, "rounds": results})
    preset = json.loads((out / "rounds_config.json").read_text())["preset"]
    (out / "summary.md").write_text(summary(final, out, minutes, preset))
    print(f"\ndemo folder: {out.resolve()} (open summary.md first)")
    return final


def summary(results: dict, out: Path, minutes: float, preset: str) -> str:
    d, t, w = results["data"], results["tokenizer"], results["dynamics"]
    ret = d["episode_return"]
    images = f"{d['frames']} frames of the dataset"
    if (out / "frames").exists():
        images = f"{EpisodeStore(out / 'frames').frames} frames: every one collection stepped"
        images += " through, all repeats of an action (`frames/`)"
    a, here = results["real_env"], round_dir(out, results["round"])
    nan = float("nan")
    control, real = w.get("controllability_h8", nan), a.get("real_return_h16", nan)
    return f"""# nanodreamer demo

{d["env"]}, {minutes:g}-minute training budget per round, preset `{preset}`; round
{results["round"]} (`{here.name}/`) below. `metrics.json` holds every number,
`learning_curve.png` the real-env return per round, each phase's folder its `losses.png`.

## Data
{d["episodes"]} episodes, {d["frames"]} stored frames (one per decision), {d["labelled_episodes"]}
with actions (return per episode {ret["mean"]:.1f} ± {ret["std"]:.1f}).

## Tokenizer
Trained on {images}. Held-out reconstruction: PSNR {t.get("psnr", nan):.2f} dB, SSIM
{t.get("ssim", nan):.3f}. ![reconstruction](tokenizer/reconstruction.gif) (left: real, right:
reconstructed)

## Dynamics
Open-loop rollouts after {w["context"]} real frames, PSNR in dB:

{psnr_table(w)}

Controllability (counterfactual minus ignore-actions PSNR at h8): **{control:+.2f} dB**
(clearly above 0: the model follows actions). Generation: {w["fps"]:.1f} frames/s with the
key/value cache, {w.get("fps_no_cache", nan):.1f} without.
![imagination]({here.name}/imagination.gif) (left: real, right: real context then imagined)

## Agent
Real-environment return over {a["episodes"]} full-length episodes on seeds no collection used
(mean ± 95% interval): imagination-trained policy **{a["return_mean"]:.1f} ±
{a["return_ci95"]:.1f}**, behaviour cloning (the better of greedy and sampled here)
{a["bc_best_return_mean"]:.1f} ± {a["bc_best_return_ci95"]:.1f}, random
{a["random_return_mean"]:.1f} ± {a["random_return_ci95"]:.1f}. It acts {a["acting"]}
(chosen on {a["acting_frames"]} validation frames on other seeds: greedy
{a["acting_returns"]["greedy"]:.1f}, sampled {a["acting_returns"]["sampled"]:.1f}); here greedy
{a["greedy_return_mean"]:.1f} ± {a["greedy_return_ci95"]:.1f}, sampled
{a["sampled_return_mean"]:.1f} ± {a["sampled_return_ci95"]:.1f}. ![agent]({here.name}/agent.gif)
Imagined rollouts of the policy: `{here.name}/imagination/imagined_policy.gif`.

World model for control: reward MAE {a.get("reward_mae", nan):.3f}, correlation
{a.get("reward_corr", nan):.2f}; under other actions {a.get("counterfactual_reward_corr", nan):.2f},
ranking their 16-step returns from one state {a.get("counterfactual_return_corr_within", nan):.2f};
imagined 16-step return {a.get("imagined_return", nan):.2f}, real {real:.2f} (correlation
{a.get("imagined_real_corr", nan):.2f}).

## Drive it yourself
`nanodreamer play --run {here}/dynamics --data {out}/data --agent {here}/imagination`, then open
http://127.0.0.1:8000/ (arrow keys or WASD).
"""
