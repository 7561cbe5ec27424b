"""Environment steps per second of `nanodreamer collect`: car racing with 1 and 2 workers, at
action repeat 8 without and with `--frames` (every repeat drawn and kept), and multi-car racing
with 1, 2 and 4 cars (one worker; frames/s counts every car's frame).

python bench/collect.py [--steps 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import commit, machine, update_results

from nanodreamer.data import collect


def frames_per_second(
    env: str, workers: int, steps: int, cars: int = 1, repeat: int = 1, frames: bool = False
) -> float:
    """Env frames stepped per second (x cars; action repeats counted: `steps` a multiple of
    `repeat`), reset frames not counted. `frames`: also keep every frame (`collect --frames`)."""
    options = {"max_episode_steps": steps, "action_repeat": repeat}
    options |= {"num_cars": cars} if cars > 1 else {}
    with tempfile.TemporaryDirectory() as out:
        keep = {"frames": f"{out}/frames"} if frames else {}
        start = time.perf_counter()
        store = collect(
            env, f"{out}/data", 2 * workers * cars, workers=workers, env_options=options,
            progress=False, **keep,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        return (store.frames - len(store)) * repeat / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500, help="steps per episode")
    args = parser.parse_args()
    rows = []
    for workers in (1, 2):
        rate = frames_per_second("car-racing", workers, args.steps)
        rows.append(f"| car-racing | 1 | {workers} | {rate:.0f} | {rate:.0f} |")
        print(rows[-1])
    for frames in (False, True):
        rate = frames_per_second("car-racing", 2, args.steps // 8 * 8, repeat=8, frames=frames)
        label = "car-racing, repeat 8" + (", `--frames`" if frames else "")
        rows.append(f"| {label} | 1 | 2 | {rate:.0f} | {rate:.0f} |")
        print(rows[-1])
    for cars in (1, 2, 4):
        rate = frames_per_second("multi-car-racing", 1, args.steps, cars)
        rows.append(f"| multi-car-racing | {cars} | 1 | {rate / cars:.0f} | {rate:.0f} |")
        print(rows[-1])
    body = "\n".join(
        [
            f"Machine: {machine()}. Commit {commit()}.",
            f"Command: `python bench/collect.py --steps {args.steps}` (random policy, "
            f"2 races of {args.steps} steps per worker, dataset writes included; multi-car "
            "racing renders one view per car).",
            "",
            "| env | cars | workers | env steps/s | frames/s |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    update_results("Collection", body)


if __name__ == "__main__":
    main()
