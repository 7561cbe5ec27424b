"""What limits a car-racing driver: speed or the road? Full CarRacing-v3 episodes (1000 frames)
on the README's evaluation seeds, per episode the share of track tiles visited, whether the lap
was finished, and where the episode ended, for two drivers at the recipe's action repeat:

- `pursuit`: a privileged pure-pursuit controller that reads the track and the car's pose from
  the simulator (no pixels, no learning): aims at the centre line `--lookahead` tiles ahead and
  holds `--speed` (gas when slower, brake when 20% faster), or `--corner` where the road
  turns. The best return over a grid of settings bounds from below what a driver can score.
- `agent`: a trained policy (`--run`, default the shipped `--pretrained car-racing`), in the
  acting mode its run records, with the same per-episode figures.

    python bench/experiments/car_racing_ceiling.py pursuit --episodes 5 --max-gas 0.2 0.3 0.5 \
        --lookahead 3 5 8
    python bench/experiments/car_racing_ceiling.py pursuit --episodes 3 --max-gas 0.2 1.0 \
        --action-repeat 1 --lookahead 5 --speed 60 90 --corner 30
    python bench/experiments/car_racing_ceiling.py agent --episodes 20

Results: bench/log/gas-cap-ceiling.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np

from nanodreamer import envs
from nanodreamer.data import EpisodeStore
from nanodreamer.envs.car_racing import frames_skipped
from nanodreamer.eval.agent import AgentPolicy, evaluation_seeds
from nanodreamer.eval.metrics import mean_interval, seeded
from nanodreamer.pretrained import pretrained


def readme_seeds(episodes: int, seed: int) -> list[int]:
    """The seeds `eval agent --pretrained car-racing --seed SEED` plays."""
    manifest = EpisodeStore(pretrained("car-racing") / "data").manifest
    taken = [e.get("seed") for e in manifest["episodes"]] + manifest.get("collection_seeds", [])
    return evaluation_seeds(seed, episodes, taken)


def pursuit_action(car_env, lookahead: int, speed: float, corner: float | None) -> np.ndarray:
    """(steer, throttle) toward the centre-line point `lookahead` tiles past the nearest one, at
    `speed`, or at `corner` where the road turns by more than 0.5 rad over the next 12 tiles."""
    base = car_env.unwrapped
    hull, track = base.car.hull, np.array([t[1:4] for t in base.track])  # (beta, x, y)
    position = np.array(hull.position)
    nearest = int(np.argmin(((track[:, 1:] - position) ** 2).sum(1)))
    target = track[(nearest + lookahead) % len(track), 1:] - position
    forward = np.array(hull.GetWorldVector((0, 1)))
    angle = math.atan2(forward[0] * target[1] - forward[1] * target[0], forward @ target)
    ahead = track[(nearest + np.arange(12)) % len(track), 0]
    turn = np.abs(np.angle(np.exp(1j * (ahead - ahead[0])))).max()
    wanted = corner if corner and turn > 0.5 else speed
    velocity = np.linalg.norm(hull.linearVelocity)
    throttle = 1.0 if velocity < wanted else (-0.5 if velocity > 1.2 * wanted else 0.0)
    return np.array([np.clip(-2.0 * angle, -1, 1), throttle], np.float32)  # angle > 0: left


def episode_figures(env, total: float, steps: int, repeat: int, speeds: list) -> dict:
    """`tiles`: the share of tiles visited; `progress`: how far along the track the car ended
    (the share of tiles up to its nearest; near `tiles` when it skipped none); `speed`: mean."""
    base = env.unwrapped
    track, position = np.array([t[2:4] for t in base.track]), np.array(base.car.hull.position)
    nearest = int(np.argmin(((track - position) ** 2).sum(1)))
    tiles = base.tile_visited_count / len(track)
    return {"return": total, "tiles": tiles, "progress": nearest / len(track),
            "lap": bool(tiles >= base.lap_complete_percent), "frames": steps * repeat,
            "speed": float(np.mean(speeds))}  # fmt: skip


def car_speed(env) -> float:
    return float(np.linalg.norm(env.unwrapped.car.hull.linearVelocity))


def run_pursuit(seeds, max_gas, repeat, lookahead, speed, corner) -> list[dict]:
    rows = []
    for seed in seeds:
        env = envs.make("car-racing", max_gas=max_gas, action_repeat=repeat)
        env.reset(seed=seed)
        total, steps, done, speeds = 0.0, 0, False, []
        with frames_skipped(env):  # the controller reads the simulator, not the frames
            while not done:
                _, reward, terminated, truncated, _ = env.step(
                    pursuit_action(env, lookahead, speed, corner)
                )
                total, steps, done = total + reward, steps + 1, terminated or truncated
                speeds.append(car_speed(env))
        rows.append(episode_figures(env, total, steps, repeat, speeds))
        env.close()
    return rows


def run_agent(run: str, seeds, repeat: int, max_gas: float) -> list[dict]:
    policy, rows = AgentPolicy(run), []
    with seeded(0):
        for seed in seeds:
            env = envs.make("car-racing", max_gas=max_gas, action_repeat=repeat)
            obs, _ = env.reset(seed=seed)
            total, steps, first, done, speeds = 0.0, 0, True, False, []
            while not done:
                action = policy.act(obs[None], np.array([first]))[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                total, steps, first = total + reward, steps + 1, False
                done, speeds = terminated or truncated, speeds + [car_speed(env)]
            rows.append(episode_figures(env, total, steps, repeat, speeds))
            env.close()
    return rows


def summary(rows: list[dict]) -> dict:
    returns = mean_interval([r["return"] for r in rows])
    means = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in ("tiles", "progress")}
    means["mean_speed"] = round(float(np.mean([r["speed"] for r in rows])), 1)
    return {"return": f"{returns['mean']:+.1f} ± {returns['ci95']:.1f}", **means,
            "laps": sum(r["lap"] for r in rows), "episodes": len(rows)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("driver", choices=("pursuit", "agent"))
    parser.add_argument("--max-gas", type=float, nargs="+", default=[0.2])
    parser.add_argument("--action-repeat", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--lookahead", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--speed", type=float, nargs="+", default=[30, 45, 60, 80])
    parser.add_argument("--corner", type=float, nargs="+", default=[0], help="0: no corner speed")
    parser.add_argument("--run", default=str(pretrained("car-racing") / "agent"))
    args = parser.parse_args()
    seeds = readme_seeds(args.episodes, args.seed)
    for gas in args.max_gas:
        if args.driver == "agent":
            rows = run_agent(args.run, seeds, args.action_repeat, gas)
            print(json.dumps({"max_gas": gas, **summary(rows), "per_episode": rows}))
            continue
        for lookahead, speed, corner in itertools.product(args.lookahead, args.speed, args.corner):
            rows = run_pursuit(seeds, gas, args.action_repeat, lookahead, speed, corner)
            setting = {"max_gas": gas, "lookahead": lookahead, "speed": speed, "corner": corner}
            print(json.dumps(setting | summary(rows)), flush=True)


if __name__ == "__main__":
    main()
