"""How reliable is a recipe: `nanodreamer rounds --seed S` from empty folders for several seeds,
each final policy then scored on the same fresh full-length episodes, beside its BC and random,
with the figures that explain the spread (rerun to resume).

    python bench/spread.py --seeds 0 1 2 --out runs/spread --episodes 20
    python bench/spread.py --seeds 0 1 2 --out runs/spread --table-only --update-results

Arguments it does not know go to `rounds` (e.g. `--recipe atari --env atari:Pong`). Every run's
evaluation uses the same seeds (`eval agent --seed 5000`: apart from every collection), the
policy in the acting mode its last round chose, BC greedy; `spread.json` keeps them per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import hours, publish, timed_run

from nanodreamer.eval.agent import evaluate_agent

EVAL_SEED = 5000  # the README's evaluation seeds


def run_seed(seed: int, out: Path, extra: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = ["nanodreamer", "rounds", "--out", str(out), "--seed", str(seed), *extra]
    timed_run(command, out / "wall.json")


def evaluate(out: Path, episodes: int) -> dict:
    """The last round's policy and BC on `episodes` evaluation episodes, kept in spread.json."""
    kept = out / "spread.json"
    if kept.exists() and json.loads(kept.read_text())["episodes"] == episodes:
        return json.loads(kept.read_text())
    rounds = json.loads((out / "rounds.json").read_text())
    config, last = json.loads((out / "rounds_config.json").read_text()), rounds[-1]
    env = config["env"]
    here = out / f"round_{last['round']}"
    policy = evaluate_agent(here / "imagination", env, episodes, seed=EVAL_SEED)
    bc = evaluate_agent(here / "agent", env, episodes, seed=EVAL_SEED, random=False, mode=True)
    e, d = last["real_env"], last["dynamics"]
    result = {
        "episodes": episodes,
        "policy": (policy["return_mean"], policy["return_ci95"]),
        "bc": (bc["return_mean"], bc["return_ci95"]),
        "random": (policy["random_return_mean"], policy["random_return_ci95"]),
        "frames": last["data"]["frames"] * config["collect"]["action_repeat"],  # env frames
        "rounds": [r["real_env"]["return_mean"] for r in rounds],
        "acting": e["acting"],
        "tiles": policy.get("tiles_visited_mean"),  # car racing: the share of the track covered
        "controllability_h8": d.get("controllability_h8"),
        "reward_corr": e.get("reward_corr"),
        "imagined_real_corr": e.get("imagined_real_corr"),
    }
    kept.write_text(json.dumps(result, indent=1))
    return result


def table(rows: dict[int, dict], walls: dict[int, float | None]) -> str:
    def interval(pair) -> str:
        return f"{pair[0]:+.1f} ± {pair[1]:.1f}"

    def figure(x) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    lines = [
        "| seed | imagination policy | BC | random | per round (its evaluation) | frames | hours "
        "| acting | tiles visited | controllability h8 (dB) | reward corr | imagined-real corr |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seed, r in rows.items():
        per_round = ", ".join(f"{x:+.0f}" for x in r["rounds"])
        lines.append(
            f"| {seed} | {interval(r['policy'])} | {interval(r['bc'])} | "
            f"{interval(r['random'])} | {per_round} | {r['frames']:,} | {figure(walls[seed])} | "
            f"{r['acting']} | {figure(r.get('tiles'))} | {figure(r['controllability_h8'])} | "
            f"{figure(r['reward_corr'])} | "
            f"{figure(r['imagined_real_corr'])} |"
        )
    means = [r["policy"][0] for r in rows.values()]
    summary = f"mean {sum(means) / len(means):+.1f}, lowest {min(means):+.1f}"
    return "\n".join(lines) + f"\n\nOver the {len(rows)} seeds: {summary}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/spread", help="one folder per seed inside")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per run")
    parser.add_argument("--table-only", action="store_true", help="tabulate, train nothing")
    parser.add_argument("--update-results", action="store_true", help="write bench/RESULTS.md")
    args, extra = parser.parse_known_args()
    out = Path(args.out)
    for seed in [] if args.table_only else args.seeds:
        run_seed(seed, out / f"seed-{seed}", extra)
    done = [s for s in args.seeds if (out / f"seed-{s}" / "rounds.json").exists()]
    if not done:
        sys.exit(f"no run in {out} has finished a round")
    rows = {s: evaluate(out / f"seed-{s}", args.episodes) for s in done}
    body = table(rows, {s: hours(out / f"seed-{s}" / "wall.json") for s in done})
    command = f"python bench/spread.py --seeds {' '.join(map(str, done))} " + " ".join(extra)
    note = f"{args.episodes} full episodes per run on seeds from {EVAL_SEED}."
    publish("Spread over seeds", body, command, note, args.update_results)


if __name__ == "__main__":
    main()
