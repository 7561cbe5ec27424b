"""Trained models that ship with the package (`--pretrained NAME`), and `nanodreamer pack`,
which makes such a folder from an imagination run:

    NAME/agent/      the imagination run: world model (dynamics transformer) and agent heads
    NAME/tokenizer/  its tokenizer
    NAME/data/       a few episodes, held-out ones first (start frames for `play`, contexts for
                     the control figures); `collection_seeds` keeps every collected episode's
                     seed, so evaluation still picks fresh ones

Only weights and run.json files (links relative to the run folder) are copied, so the folder
works wherever it lies; run.json's `acting` (a round's choice) says how `eval agent` acts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nanodreamer.data import EpisodeStore
from nanodreamer.data.sampler import split_episodes
from nanodreamer.errors import UserError
from nanodreamer.runs import RUN_FILE, export_weights, fingerprint, read_run, write_run

PRETRAINED = Path(__file__).parent / "pretrained"


def pretrained(name: str) -> Path:
    """The shipped folder `name` (see the module doc)."""
    path = PRETRAINED / name
    if not (path / "agent" / RUN_FILE).is_file():
        known = sorted(p.name for p in PRETRAINED.glob("*") if (p / "agent" / RUN_FILE).is_file())
        offer = f"use one of {', '.join(known)}" if known else "none ship with this version"
        raise UserError(f"no pretrained models named {name!r}: {offer}")
    return path


def pack(run: str | Path, out: str | Path, episodes: int = 4) -> Path:
    """Copy imagination run `run`, its tokenizer and `episodes` of its episodes to `out`
    (replaced as a whole once complete). Links back to the training folders are dropped (a
    packed run needs none of them to act), so nothing in it names the machine it came from."""
    info = read_run(run, "imagination")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def place(source, name: str, info: dict, **links) -> None:  # run `source` as tmp/name
        info = {
            k: v for k, v in info.items() if k not in ("data", "world_model", "agent_run", "init")
        }
        (tmp / name).mkdir(parents=True)
        export_weights(tmp / name, source, info | links)
        write_run(tmp / name, info | links)

    place(info["tokenizer"], "tokenizer", read_run(info["tokenizer"], "tokenizer"))
    place(run, "agent", info, tokenizer="../tokenizer", data="../data",
          tokenizer_fingerprint=fingerprint(tmp / "tokenizer"))  # fmt: skip
    _copy_episodes(EpisodeStore(info["data"]), tmp / "data", episodes)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _copy_episodes(source: EpisodeStore, out: Path, count: int) -> None:
    m = source.manifest
    picked = (split_episodes(source, "val") + split_episodes(source, "train"))[:count]
    keys = ("env", "obs_shape", "action_dim", "action_bins", "env_options")
    with EpisodeStore.create(out, **{k: m[k] for k in keys}) as store:
        for i in picked:
            entry = source.episodes[i]
            extra = {k: v for k, v in entry.items() if k in ("seed", "policy")}
            store.add(source.load(i), actions=entry.get("actions", True), **extra)
        seeds = [e["seed"] for e in source.episodes if "seed" in e]
        store.annotate(collection_seeds=seeds + m.get("collection_seeds", []))
