"""Does refitting the reward and continuation heads on a trained agent's frozen features
(`nanodreamer.train.agent.fit_heads`, the recipe's `--head-fit-steps`) make its reward model
see more, and does imagination then play better? Copies agent run AGENT to OUT/agent, scores
its per-step reward correlation on held-out games before and after the fit, and with `--init`
trains phase 3 from it as `rounds` does (OUT/imagination, `--steps` updates, the atari
recipe, starting from the policy INIT), for `eval agent`. Results: bench/log/atari-recipe.md.

    python bench/experiments/head_fit.py runs/boxing/round_2/agent runs/boxing-hf \
        --fit-steps 3000 --init runs/boxing/round_1/imagination --steps 2868
    nanodreamer eval agent --run runs/boxing-hf/imagination --env atari:Boxing --episodes 10 \
        --seed 7000 --json
"""

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from nanodreamer.data import EpisodeStore
from nanodreamer.data.latents import encode_dataset
from nanodreamer.eval.control import per_step_rewards
from nanodreamer.pipeline import _train
from nanodreamer.recipes import recipe
from nanodreamer.runs import export_weights, load_agent, load_tokenizer
from nanodreamer.train import distributed
from nanodreamer.train.agent import fit_heads
from nanodreamer.train.imagination import ImaginationPhase, imagination_train_config

parser = argparse.ArgumentParser()
parser.add_argument("agent", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--fit-steps", type=int, default=3000)
parser.add_argument("--init", help="phase 3 starts from this imagination run")
parser.add_argument("--steps", type=int, default=2868, help="phase-3 updates")
args = parser.parse_args()

agent = args.out / "agent"
shutil.copytree(args.agent, agent, ignore=shutil.ignore_patterns("checkpoint.pt"))
model, info = load_agent(agent)
tokenizer, store = load_tokenizer(info["tokenizer"]), EpisodeStore(info["data"])
report = {"before": per_step_rewards(model, tokenizer, store, 8)}
report["fit"] = fit_heads(model, encode_dataset(info["data"], info["tokenizer"]), args.fit_steps)
report["after"] = per_step_rewards(model, tokenizer, store, 8)
info["head_fit_steps"] = args.fit_steps
export_weights(agent, model, info)
(agent / "run.json").write_text(json.dumps(info, indent=1))
print(json.dumps(report))
if args.init:
    c, cfg = recipe("atari"), imagination_train_config(agent)
    cfg = replace(cfg, minutes=None, steps=args.steps, eval_every=10**6, save_every=250)
    phase = lambda: ImaginationPhase(agent, cfg, c.imagination, init=args.init)  # noqa: E731
    print(_train(args.out / "imagination", phase, cfg, distributed.setup()))
