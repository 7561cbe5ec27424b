"""Atari 100k with the one `atari` recipe: `nanodreamer rounds --recipe atari` on each game from
an empty folder (rerun to resume), then one table of every game's last round beside the
published figures.

    python bench/atari100k.py --games Boxing Breakout MsPacman Pong --out runs/atari100k
    python bench/atari100k.py --games Boxing --out runs/atari100k --table-only --update-results

Scores are the evaluation's full games on fresh seeds (`eval.json`: the imagination policy in
its chosen acting mode, BC the better of its two modes, random the collector's policy, all on
the same seeds), human-normalised as (score - random) / (human - random) with the standard
random and human references. Wall time is kept per game in `wall.json` beside its run (time
already spent survives a restart, up to the last minute).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import hours, publish, timed_run

# (random, human) scores of the Atari 100k literature (DQN's references, as SimPLe, IRIS and
# DIAMOND normalise them)
REFERENCES = {
    "Alien": (227.8, 7127.7), "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3), "BankHeist": (14.2, 753.1), "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1), "Breakout": (1.7, 30.5), "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4), "DemonAttack": (152.1, 1971.0), "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7), "Gopher": (257.6, 2412.5), "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8), "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3), "MsPacman": (307.3, 6951.6), "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3), "Qbert": (163.9, 13455.0), "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7), "UpNDown": (533.4, 11693.2),
}  # fmt: skip
# Published 100k-step scores (GPU runs): IRIS (Micheli et al., 2023, Table 1) and DIAMOND
# (Alonso et al., 2024, Table 1)
PUBLISHED = {
    "Boxing": (70.1, 86.9), "Breakout": (83.7, 132.5), "MsPacman": (999.0, 1958.0),
    "Pong": (14.6, 20.4),
}  # fmt: skip


def hns(game: str, score: float) -> float:
    low, high = REFERENCES[game]
    return (score - low) / (high - low)


def run_game(game: str, out: Path, extra: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = ["nanodreamer", "rounds", "--recipe", "atari", "--env", f"atari:{game}"]
    timed_run(command + ["--out", str(out), *extra], out / "wall.json")


def game_row(game: str, out: Path) -> dict | None:
    """The last finished round's figures of one game, None before its first round ends."""
    rounds = out / "rounds.json"
    if not rounds.exists():
        return None
    last = json.loads(rounds.read_text())[-1]
    e = last["real_env"]
    return {
        "game": game,
        "round": last["round"],
        "score": (e["return_mean"], e["return_ci95"]),
        "bc": (e["bc_best_return_mean"], e["bc_best_return_ci95"]),
        "random": (e["random_return_mean"], e["random_return_ci95"]),
        "hns": hns(game, e["return_mean"]),
        "steps": last["data"]["frames"] - last["data"]["episodes"],  # agent steps collected
        "episodes": e["episodes"],
        "hours": hours(out / "wall.json"),
        "acting": e["acting"],
    }


def table(rows: list[dict]) -> str:
    def interval(pair) -> str:
        return f"{pair[0]:.1f} ± {pair[1]:.1f}" if pair[1] is not None else f"{pair[0]:.1f}"

    lines = [
        "| game | imagination policy | BC | random | HNS | human | IRIS | DIAMOND "
        "| agent steps | hours | round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        iris, diamond = PUBLISHED.get(r["game"], (None, None))
        hours = f"{r['hours']:.2f}" if r["hours"] is not None else "n/a"
        lines.append(
            f"| {r['game']} | {interval(r['score'])} ({r['acting']}) | {interval(r['bc'])} "
            f"| {interval(r['random'])} | {r['hns']:.3f} | {REFERENCES[r['game']][1]} "
            f"| {iris or 'n/a'} | {diamond or 'n/a'} | {r['steps']:,} | {hours} | {r['round']} |"
        )
    mean = sum(r["hns"] for r in rows) / len(rows)
    return "\n".join(lines) + f"\n\nMean HNS over these {len(rows)} games: **{mean:.3f}**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", nargs="+", default=list(PUBLISHED), choices=list(REFERENCES))
    parser.add_argument("--out", default="runs/atari100k", help="one folder per game inside")
    parser.add_argument("--table-only", action="store_true", help="tabulate, train nothing")
    parser.add_argument("--update-results", action="store_true", help="write bench/RESULTS.md")
    args, extra = parser.parse_known_args()  # the rest goes to `rounds` (e.g. --preset small)
    out = Path(args.out)
    for game in [] if args.table_only else args.games:
        run_game(game, out / game.lower(), extra)
    rows = [row for g in args.games if (row := game_row(g, out / g.lower()))]
    if not rows:
        sys.exit(f"no game in {out} has finished a round")
    command = f"python bench/atari100k.py --games {' '.join(args.games)} " + " ".join(extra)
    note = f"each game's evaluation: {rows[0]['episodes']} full games on fresh seeds."
    publish("Atari 100k", table(rows), command, note, args.update_results)


if __name__ == "__main__":
    main()
