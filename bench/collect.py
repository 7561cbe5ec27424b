"""Environment steps per second of `nanodreamer collect` with 1 and 2 workers.

python bench/collect.py [--steps 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import commit, machine, update_results

from nanodreamer.data import collect


def steps_per_second(env: str, workers: int, steps: int) -> float:
    episodes = 2 * workers
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        store = collect(
            env,
            out,
            episodes,
            workers=workers,
            env_options={"max_episode_steps": steps},
            progress=False,
        )
        elapsed = time.perf_counter() - start
        return (store.frames - len(store)) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500, help="steps per episode")
    args = parser.parse_args()
    rows = []
    for workers in (1, 2):
        rate = steps_per_second("car-racing", workers, args.steps)
        rows.append(f"| car-racing | {workers} | {rate:.0f} |")
        print(rows[-1])
    body = "\n".join(
        [
            f"Machine: {machine()}. Commit {commit()}.",
            f"Command: `python bench/collect.py --steps {args.steps}` (random policy, "
            f"2 episodes of {args.steps} steps per worker, dataset writes included).",
            "",
            "| env | workers | env steps/s |",
            "| --- | --- | --- |",
            *rows,
        ]
    )
    update_results("Collection", body)


if __name__ == "__main__":
    main()
